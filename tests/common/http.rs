//! Plain HTTP/1.1 over a TCP socket, byte by byte: requests are written as the test
//! spells them and responses are read without a client library's opinions.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A parsed HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of header `name`.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The value of cookie `name` set by a `Set-Cookie` header, if any.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers_named("set-cookie").into_iter().find_map(|c| {
            let pair = c.split(';').next()?.trim();
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }
}

/// Reads a status line and headers (up to the blank line).
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before the end of the response head: {:?}",
                    String::from_utf8_lossy(&head)
                ),
            ));
        }
        if head.ends_with(b"\r\n\r\n") || head == b"\r\n" {
            break;
        }
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head over 64 KiB"));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        other => {
            return Err(std::io::Error::other(format!(
                "bad response head {other:?}: {:?}",
                String::from_utf8_lossy(&head)
            )))
        }
    }
    let status = resp.code.unwrap_or(0);
    let headers = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Ok((status, headers))
}

/// Reads a whole response: head, then a body framed by Content-Length, chunked
/// encoding, or the end of the connection. A 101 has no body.
pub async fn read_response<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    request_method: &str,
) -> std::io::Result<HttpResponse> {
    let (status, headers) = read_head(r).await?;
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if status == 101
        || status == 204
        || status == 304
        || (100..200).contains(&status)
        || request_method.eq_ignore_ascii_case("HEAD")
    {
        return Ok(resp);
    }
    if let Some(len) = resp.header("content-length") {
        let len: usize = len.trim().parse().map_err(std::io::Error::other)?;
        resp.body.resize(len, 0);
        r.read_exact(&mut resp.body).await?;
    } else if resp
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::other(format!("chunk size {line:?}: {e}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t).await? == 0 || t == "\r\n" {
                        break;
                    }
                }
                break;
            }
            let start = resp.body.len();
            resp.body.resize(start + size, 0);
            r.read_exact(&mut resp.body[start..]).await?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await?;
        }
    } else {
        r.read_to_end(&mut resp.body).await?;
    }
    Ok(resp)
}

/// Sends `request` (complete bytes) on a fresh connection and reads one response.
pub async fn http_raw(addr: SocketAddr, request: &str) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request.as_bytes()).await?;
    let method = request.split(' ').next().unwrap_or("GET").to_string();
    let mut r = BufReader::new(s);
    read_response(&mut r, &method).await
}

/// `GET path` with `Connection: close` and the given extra headers.
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    http_raw(addr, &req).await
}

/// `GET path` with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    http_get_with(addr, path, &[]).await
}
