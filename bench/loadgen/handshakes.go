package main

import (
	"bytes"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type handshakeResult struct {
	Target         string    `json:"target"`
	Workers        int       `json:"workers"`
	Handshakes     int64     `json:"handshakes"`
	TLS            bool      `json:"tls"`
	Resume         bool      `json:"resume"`
	Resumed        int64     `json:"resumed"` // TLS handshakes that resumed a session
	Groups         string    `json:"groups,omitempty"`
	ErrorCount     int64     `json:"error_count"`
	Seconds        float64   `json:"seconds"`
	PerSec         float64   `json:"per_s"`
	ProxyBefore    *procStat `json:"proxy_before,omitempty"`
	ProxyAfter     *procStat `json:"proxy_after,omitempty"`
	ProxyCPUSec    float64   `json:"proxy_cpu_s"`
	MachineCores   float64   `json:"machine_busy_cores"`
	ForeignCores   float64   `json:"foreign_busy_cores"` // machine minus proxy, backend and this client
	CPUUSPerHandsh float64   `json:"proxy_cpu_us_per_handshake"`
	Errors         []string  `json:"errors,omitempty"`
}

// cmdHandshakes opens and closes WebSocket connections as fast as --workers
// parallel loops can: TCP connect + upgrade (101 and Sec-WebSocket-Accept
// checked), send Close 1000, read the peer's Close, close TCP.
// Bounded by --duration and --max.
func cmdHandshakes(args []string) {
	fs := flag.NewFlagSet("handshakes", flag.ExitOnError)
	target := fs.String("target", "", "ws:// URL")
	workers := fs.Int("workers", 16, "parallel open/close loops")
	duration := fs.Duration("duration", 10*time.Second, "time bound")
	max := fs.Int64("max", 500000, "count bound")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) whose CPU to measure; 0 = none")
	backendPID := fs.Int("backend-pid", 0, "backend process, to tell foreign CPU load from ours; 0 = unknown")
	gorilla := fs.Bool("gorilla", false, "use the gorilla client instead of the lean raw handshake")
	proxyV2 := fs.Bool("proxy-v2", false, "send a PROXY protocol v2 header (PROXY, TCP4) before each request, as a load balancer would")
	caFile := fs.String("ca", "", "wss://: PEM file of the certificate to trust")
	serverName := fs.String("server-name", "localhost", "wss://: TLS server name (SNI)")
	resume := fs.Bool("resume", false, "wss://: resume TLS sessions (a ticket cache per worker); off: every handshake is a full one")
	groups := fs.String("groups", "x25519,p256", "wss://: key-exchange groups offered, in order (x25519, p256, p384); a key share is sent for the first")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("handshakes: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	dialer := newDialer(srcs, 1024)
	u, err := url.Parse(*target)
	if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") {
		fatalf("handshakes: --target must be a ws:// or wss:// URL")
	}
	var tlsCfg *tls.Config
	if u.Scheme == "wss" {
		if *gorilla {
			fatalf("handshakes: --gorilla is for ws:// only")
		}
		tlsCfg = handshakeTLS(*caFile, *serverName, *groups)
	}
	errs := newErrSampler()
	res := handshakeResult{Target: *target, Workers: *workers, TLS: tlsCfg != nil, Resume: *resume && tlsCfg != nil}
	if tlsCfg != nil {
		res.Groups = *groups
	}
	var resumed atomic.Int64
	if *pid > 0 {
		b, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.ProxyBefore = &b
	}
	ours0 := oursCPU(*backendPID)
	var ok, claimed atomic.Int64
	closeMsg := websocket.FormatCloseMessage(1000, "")
	start := time.Now()
	stopAt := start.Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc := newRawHandshaker(u, srcs)
			hc.proxyV2 = *proxyV2
			if tlsCfg != nil {
				hc.tls = tlsCfg.Clone()
				if *resume {
					hc.tls.ClientSessionCache = tls.NewLRUClientSessionCache(4)
				}
				hc.resumed = &resumed
			}
			for time.Now().Before(stopAt) && claimed.Add(1) <= *max {
				var err error
				if *gorilla {
					err = gorillaCycle(dialer, *target, closeMsg)
				} else {
					err = hc.cycle()
				}
				if err != nil {
					errs.add(err)
					// Back off a little so a failing proxy does not spin the CPU.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if *pid > 0 {
		a, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.ProxyAfter = &a
		res.ProxyCPUSec = a.CPUSec - res.ProxyBefore.CPUSec
		res.MachineCores = (a.MachineBusyS - res.ProxyBefore.MachineBusyS) / elapsed.Seconds()
		if *backendPID > 0 {
			res.ForeignCores = (a.MachineBusyS - res.ProxyBefore.MachineBusyS - res.ProxyCPUSec - (oursCPU(*backendPID) - ours0)) / elapsed.Seconds()
		}
	}
	res.Handshakes = ok.Load()
	res.Resumed = resumed.Load()
	res.ErrorCount = errs.n.Load()
	res.Errors = errs.samples()
	res.Seconds = elapsed.Seconds()
	res.PerSec = float64(res.Handshakes) / res.Seconds
	if res.Handshakes > 0 && *pid > 0 {
		res.CPUUSPerHandsh = res.ProxyCPUSec * 1e6 / float64(res.Handshakes)
	}
	emitJSON(res)
}

func gorillaCycle(dialer *websocket.Dialer, target string, closeMsg []byte) error {
	c, _, err := dialer.Dial(target, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.WriteControl(websocket.CloseMessage, closeMsg, time.Now().Add(5*time.Second))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var rerr error
	for {
		if _, _, rerr = c.ReadMessage(); rerr != nil {
			break
		}
	}
	if !websocket.IsCloseError(rerr, 1000) {
		return rerr
	}
	return nil
}

// rawHandshaker is a lean client for the handshake benchmark, so that the
// client spends as little of the machine's 2 cores as possible: a fixed
// request, the 101 and Sec-WebSocket-Accept checked, one masked Close 1000,
// the peer's Close read, TCP closed.
type rawHandshaker struct {
	addr    string
	host    string
	path    string
	srcs    []net.IP
	buf     []byte
	rng     *rand.Rand
	closeFr []byte
	proxyV2 bool
	tls     *tls.Config   // wss://: TLS 1.3 first, then the upgrade
	resumed *atomic.Int64 // TLS handshakes that resumed a session
}

// handshakeTLS is the TLS client of a wss:// handshake loop: TLS 1.3 only, the
// given groups in order (Go would put a post-quantum hybrid first; a browser's
// classical first share is X25519), the benchmark's certificate trusted.
func handshakeTLS(caFile, serverName, groups string) *tls.Config {
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(caFile)
	if err != nil || !pool.AppendCertsFromPEM(pem) {
		fatalf("handshakes: --ca %q: no PEM certificate (%v)", caFile, err)
	}
	var curves []tls.CurveID
	for _, g := range strings.Split(groups, ",") {
		switch strings.TrimSpace(g) {
		case "x25519":
			curves = append(curves, tls.X25519)
		case "p256":
			curves = append(curves, tls.CurveP256)
		case "p384":
			curves = append(curves, tls.CurveP384)
		default:
			fatalf("handshakes: unknown group %q", g)
		}
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13, CurvePreferences: curves, NextProtos: []string{"http/1.1"}}
}

// proxyV2Header is what an L4 load balancer sends first (HAProxy's
// doc/proxy-protocol.txt, section 2.2): the v2 signature, PROXY over TCP4, and the
// connection's own addresses as the client's.
func proxyV2Header(src, dst net.Addr) []byte {
	s, _ := src.(*net.TCPAddr)
	d, _ := dst.(*net.TCPAddr)
	b := make([]byte, 0, 28)
	b = append(b, "\r\n\r\n\x00\r\nQUIT\n"...)
	b = append(b, 0x21, 0x11, 0x00, 0x0c)
	if s == nil || d == nil || s.IP.To4() == nil || d.IP.To4() == nil {
		return append(b[:12], 0x20, 0x00, 0x00, 0x00) // LOCAL, UNSPEC
	}
	b = append(b, s.IP.To4()...)
	b = append(b, d.IP.To4()...)
	b = binary.BigEndian.AppendUint16(b, uint16(s.Port))
	b = binary.BigEndian.AppendUint16(b, uint16(d.Port))
	return b
}

func newRawHandshaker(u *url.URL, srcs []net.IP) *rawHandshaker {
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "wss" {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	path := u.RequestURI()
	return &rawHandshaker{addr: addr, host: u.Host, path: path, srcs: srcs, buf: make([]byte, 4096),
		rng: rand.New(rand.NewSource(time.Now().UnixNano()))}
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func (h *rawHandshaker) cycle() error {
	nd := net.Dialer{Timeout: 5 * time.Second}
	if len(h.srcs) > 0 {
		nd.LocalAddr = &net.TCPAddr{IP: h.srcs[srcCounter.Add(1)%uint64(len(h.srcs))]}
		nd.Control = func(network, address string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) {
				_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			})
		}
	}
	tcp, err := nd.Dial("tcp", h.addr)
	if err != nil {
		return err
	}
	defer tcp.Close()
	_ = tcp.SetDeadline(time.Now().Add(5 * time.Second))
	conn := net.Conn(tcp)
	if h.tls != nil {
		if h.proxyV2 { // the PROXY header comes before the TLS ClientHello
			if _, err := tcp.Write(proxyV2Header(tcp.LocalAddr(), tcp.RemoteAddr())); err != nil {
				return err
			}
		}
		tc := tls.Client(tcp, h.tls)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS: %w", err)
		}
		if tc.ConnectionState().DidResume {
			h.resumed.Add(1)
		}
		conn = tc
	}
	var keyRaw [16]byte
	h.rng.Read(keyRaw[:])
	key := base64.StdEncoding.EncodeToString(keyRaw[:])
	req := "GET " + h.path + " HTTP/1.1\r\nHost: " + h.host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n\r\n"
	out := []byte(req)
	if h.proxyV2 && h.tls == nil {
		out = append(proxyV2Header(conn.LocalAddr(), conn.RemoteAddr()), out...)
	}
	if _, err := conn.Write(out); err != nil {
		return err
	}
	// Read the response head.
	n := 0
	end := -1
	for end < 0 {
		if n == len(h.buf) {
			return fmt.Errorf("response head too large")
		}
		m, err := conn.Read(h.buf[n:])
		if err != nil {
			return fmt.Errorf("reading 101: %w", err)
		}
		n += m
		end = bytes.Index(h.buf[:n], []byte("\r\n\r\n"))
	}
	head := h.buf[:end]
	if !bytes.HasPrefix(head, []byte("HTTP/1.1 101")) {
		line := head
		if i := bytes.IndexByte(line, '\r'); i >= 0 {
			line = line[:i]
		}
		return fmt.Errorf("handshake: %q", line)
	}
	sum := sha1.Sum([]byte(key + wsGUID))
	want := base64.StdEncoding.EncodeToString(sum[:])
	if !headerHas(head, "sec-websocket-accept", want) {
		return fmt.Errorf("handshake: bad or missing Sec-WebSocket-Accept")
	}
	rest := n - (end + 4) // bytes after the head (early frames); expected 0
	// Masked Close 1000: FIN+Close, MASK|2, 4-byte mask, masked status code.
	var fr [8]byte
	fr[0], fr[1] = 0x88, 0x82
	h.rng.Read(fr[2:6])
	fr[6], fr[7] = 0x03^fr[2], 0xE8^fr[3]
	if _, err := conn.Write(fr[:]); err != nil {
		return err
	}
	// Read until the peer's Close frame header (0x88) arrives, then close.
	copy(h.buf, h.buf[end+4:n])
	n = rest
	for {
		if n >= 2 {
			if h.buf[0] != 0x88 {
				return fmt.Errorf("expected Close frame, got opcode byte %#x", h.buf[0])
			}
			return nil
		}
		m, err := conn.Read(h.buf[n:])
		if err != nil {
			return fmt.Errorf("reading Close: %w", err)
		}
		n += m
	}
}

// headerHas reports whether the response head has header name (lower case)
// with exactly value.
func headerHas(head []byte, name, value string) bool {
	for _, line := range bytes.Split(head, []byte("\r\n"))[1:] {
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		if strings.EqualFold(string(bytes.TrimSpace(line[:i])), name) &&
			string(bytes.TrimSpace(line[i+1:])) == value {
			return true
		}
	}
	return false
}
