//! Standalone mode's route source: YAML files (one file, or a directory of
//! `*.yaml`/`*.yml`, multi-document allowed) holding `WebSocketRoute` documents,
//! compiled into a [`RouteTable`] and watched for changes.

mod locate;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use serde::Deserialize;

use crate::api::{Backend, BackendTls, JwksRef, Tls, WebSocketRouteSpec, API_VERSION};
use crate::compile::{self, FieldError, Resolver};
use crate::proxy::route::auth::KeySet;
use crate::proxy::route::backend_tls::Material;
use crate::proxy::route::table::{BackendAddr, Route, RouteKey, RouteTable};

pub use watch::{fingerprint, watch};

/// One problem in a route file, printed as `file:line: field: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// The field path, e.g. `spec.backends[0].address`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.field,
            self.message
        )
    }
}

/// A successfully loaded configuration.
#[derive(Debug)]
pub struct Loaded {
    /// The compiled routes.
    pub table: RouteTable,
    /// Route files read.
    pub files: Vec<PathBuf>,
    /// Certificate and key files the routes use (watched like the route files).
    pub tls_files: Vec<PathBuf>,
    /// JWKS files of `auth.jwt.jwks.file` (watched like the route files).
    pub jwks_files: Vec<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: WebSocketRouteSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(flatten)]
    _other: BTreeMap<String, serde_yaml::Value>,
}

/// Backends and certificates of standalone mode: static addresses and PEM files
/// (relative paths are relative to the route file).
struct FileResolver<'a> {
    dir: &'a Path,
    tls_files: Vec<PathBuf>,
    jwks_files: Vec<PathBuf>,
}

impl Resolver for std::cell::RefCell<FileResolver<'_>> {
    fn backends(&self, _: &str, index: usize, b: &Backend) -> Result<Vec<BackendAddr>, FieldError> {
        match (&b.address, &b.service) {
            (Some(a), _) => Ok(vec![BackendAddr { address: a.as_str().into(), weight: b.weight }]),
            (None, Some(_)) => Err(FieldError::new(
                format!("spec.backends[{index}].service"),
                "Service backends need controller mode (`wsgate run`); standalone mode takes `address` backends",
            )),
            (None, None) => Ok(vec![]),
        }
    }

    fn certificate(&self, _: &str, tls: &Tls) -> Result<Arc<CertifiedKey>, FieldError> {
        let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
            return Err(FieldError::new(
                "spec.tls",
                "standalone mode needs certFile and keyFile (secretName is for controller mode)",
            ));
        };
        let mut me = self.borrow_mut();
        let cert = me.dir.join(cert);
        let key = me.dir.join(key);
        me.tls_files.extend([cert.clone(), key.clone()]);
        let read = |p: &Path, field: &str| {
            std::fs::read(p)
                .map_err(|e| FieldError::new(field, format!("cannot read {}: {e}", p.display())))
        };
        let (c, k) = (
            read(&cert, "spec.tls.certFile")?,
            read(&key, "spec.tls.keyFile")?,
        );
        compile::certified_key(&c, &k).map_err(|e| FieldError::new("spec.tls", e))
    }

    fn jwks(&self, _: &str, jwks: &JwksRef) -> Result<Arc<KeySet>, FieldError> {
        let Some(file) = &jwks.file else {
            return Err(FieldError::new(
                "spec.auth.jwt.jwks",
                "standalone mode takes a JWKS from file or uri (secretName and configMapName are for controller mode)",
            ));
        };
        let mut me = self.borrow_mut();
        let path = me.dir.join(file);
        me.jwks_files.push(path.clone());
        let json = std::fs::read(&path).map_err(|e| {
            FieldError::new(
                "spec.auth.jwt.jwks.file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        compile::key_set(&json, &path.display().to_string())
    }

    fn backend_tls(&self, _: &str, tls: &BackendTls) -> Result<Material, FieldError> {
        if !tls.ca_certificate_refs.is_empty() || tls.client_certificate_ref.is_some() {
            return Err(FieldError::new(
                "spec.backendTLS",
                "standalone mode takes caFile, certFile and keyFile (caCertificateRefs and clientCertificateRef are for controller mode)",
            ));
        }
        let mut me = self.borrow_mut();
        let dir = me.dir.to_path_buf();
        let mut read = |file: &str, field: &str| {
            let path = dir.join(file);
            // Watched like the route files, so a rotated CA or client certificate
            // is in the table before the next connection.
            me.tls_files.push(path.clone());
            let pem = std::fs::read(&path).map_err(|e| {
                FieldError::new(field, format!("cannot read {}: {e}", path.display()))
            })?;
            Ok::<_, FieldError>((path.display().to_string(), pem))
        };
        let mut material = Material::default();
        if let Some(ca) = &tls.ca_file {
            material.cas.push(read(ca, "spec.backendTLS.caFile")?);
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            let (what, cert) = read(cert, "spec.backendTLS.certFile")?;
            let (_, key) = read(key, "spec.backendTLS.keyFile")?;
            material.client = Some((what, cert, key));
        }
        Ok(material)
    }
}

/// The route files under `path`: the file itself, or a directory's `*.yaml`/`*.yml`
/// in name order.
pub fn route_files(path: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let unreadable = |e: std::io::Error| ConfigError {
        file: path.to_owned(),
        line: 0,
        field: "file".into(),
        message: format!("cannot read: {e}"),
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Splits multi-document YAML into (first line, text) pieces.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(0usize, String::new())];
    for (i, line) in text.lines().enumerate() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep {
            docs.push((i + 1, String::new()));
        } else if line == "..." {
            continue;
        } else {
            let d = &mut docs.last_mut().expect("never empty").1;
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.retain(|(_, d)| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// Reads, validates and compiles every route under `path`. Either the whole
/// configuration is good, or every problem is reported and nothing is returned.
pub fn load(path: &Path) -> Result<Loaded, Vec<ConfigError>> {
    let files = route_files(path).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut routes: Vec<(Route, PathBuf, usize)> = Vec::new();
    // Indexes into `routes`: duplicates and overlaps in one lookup each.
    let mut keys: HashMap<RouteKey, usize> = HashMap::new();
    let mut claims: compile::Claims<usize> = compile::Claims::default();
    let mut tls_files = Vec::new();
    let mut jwks_files = Vec::new();
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: file.clone(),
                    line: 0,
                    field: "file".into(),
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        for (start, doc) in documents(&text) {
            let at = |field: &str, message: String| ConfigError {
                file: file.clone(),
                line: start + locate::locate(&doc, field) + 1,
                field: field.to_owned(),
                message,
            };
            let parsed: Document =
                match serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&doc)) {
                    Ok(d) => d,
                    Err(e) => {
                        errors.push(yaml_error(file, start, &doc, &e));
                        continue;
                    }
                };
            if parsed.api_version != API_VERSION {
                errors.push(at(
                    "apiVersion",
                    format!("{:?} is not {API_VERSION}", parsed.api_version),
                ));
                continue;
            }
            if parsed.kind != "WebSocketRoute" {
                errors.push(at(
                    "kind",
                    format!("{:?} is not WebSocketRoute", parsed.kind),
                ));
                continue;
            }
            if parsed.metadata.name.is_empty() {
                errors.push(at("metadata.name", "must not be empty".into()));
                continue;
            }
            let ns = parsed
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let resolver = std::cell::RefCell::new(FileResolver {
                dir,
                tls_files: Vec::new(),
                jwks_files: Vec::new(),
            });
            match compile::compile(&ns, &parsed.metadata.name, &parsed.spec, &resolver) {
                Ok(route) => {
                    let used = resolver.into_inner();
                    tls_files.extend(used.tls_files);
                    jwks_files.extend(used.jwks_files);
                    let line = start + 1;
                    if let Some(&i) = keys.get(&route.key) {
                        let (_, f, l) = &routes[i];
                        errors.push(at(
                            "metadata.name",
                            format!(
                                "route {} is already defined at {}:{l}",
                                route.key,
                                f.display()
                            ),
                        ));
                    } else if let Some(&i) = claims.overlapping(&route) {
                        let (r, f, l) = &routes[i];
                        errors.push(at(
                            "spec.path",
                            format!(
                                "same hostnames and path as route {} ({}:{l})",
                                r.key,
                                f.display()
                            ),
                        ));
                    } else {
                        keys.insert(route.key.clone(), routes.len());
                        claims.insert(&route, routes.len());
                        routes.push((route, file.clone(), line));
                    }
                }
                Err(errs) => errors.extend(errs.into_iter().map(|e| at(&e.field, e.message))),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Loaded {
        table: RouteTable::new(routes.into_iter().map(|(r, _, _)| r).collect()),
        files,
        tls_files,
        jwks_files,
    })
}

/// A YAML or schema error with its line and the exact field path.
fn yaml_error(
    file: &Path,
    start: usize,
    doc: &str,
    e: &serde_path_to_error::Error<serde_yaml::Error>,
) -> ConfigError {
    let inner = e.inner();
    let text = inner.to_string();
    let mut message = text.split(" at line ").next().unwrap_or(&text).to_owned();
    let path = e.path().to_string();
    // serde_yaml prefixes its own (shorter) path; the tracked one replaces it.
    if let Some((prefix, rest)) = message.split_once(": ") {
        if !prefix.contains(' ') {
            message = rest.to_owned();
        }
    }
    let field = if path == "." || path.is_empty() {
        "document".to_owned()
    } else {
        path
    };
    let line = match inner.location() {
        Some(l) => l.line(),
        None => locate::locate(doc, &field) + 1,
    };
    ConfigError {
        file: file.to_owned(),
        line: start + line,
        field,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const GOOD: &str = "apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: a}
spec:
  backends: [{address: '127.0.0.1:9001'}]
---
apiVersion: wsgate.io/v1alpha1
kind: WebSocketRoute
metadata: {name: b, namespace: games}
spec:
  path: {type: Exact, value: /b}
  backends: [{address: '127.0.0.1:9002'}]
";

    #[test]
    fn loads_multi_document_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "routes.yaml", GOOD);
        write(dir.path(), "notes.txt", "not yaml: [");
        let loaded = load(dir.path()).unwrap();
        let keys: Vec<_> = loaded
            .table
            .routes()
            .iter()
            .map(|r| r.key.to_string())
            .collect();
        assert_eq!(keys, ["default/a", "games/b"]);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("'127.0.0.1:9002'", "'nope'").replace(
            "metadata: {name: a}",
            "metadata:\n  name: a\n  labels: {x: y}",
        );
        let f = write(dir.path(), "routes.yaml", &bad);
        let errs = load(&f).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let line = errs[0].to_string();
        assert!(
            line.starts_with(&format!("{}:14: spec.backends[0].address: ", f.display())),
            "{line}"
        );
    }

    #[test]
    fn schema_errors_carry_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "r.yaml",
            &GOOD.replace("path: {type: Exact", "path: {type: Fuzzy"),
        );
        let errs = load(&f).unwrap_err();
        assert_eq!(errs[0].line, 11, "{errs:?}");
        let f = write(
            dir.path(),
            "r.yaml",
            &GOOD.replace("  backends: [{address: '127.0.0.1:9001'}]", "  backend: []"),
        );
        let errs = load(&f).unwrap_err();
        assert_eq!(errs[0].line, 5, "{errs:?}");
        assert!(errs[0].message.contains("backend"), "{errs:?}");
    }

    #[test]
    fn conflicting_routes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dup = format!(
            "{GOOD}---\n{}",
            GOOD.split("---\n")
                .next()
                .unwrap()
                .replace("name: a", "name: c")
        );
        let errs = load(&write(dir.path(), "r.yaml", &dup)).unwrap_err();
        assert!(
            errs[0]
                .message
                .contains("same hostnames and path as route default/a"),
            "{errs:?}"
        );
    }
}
