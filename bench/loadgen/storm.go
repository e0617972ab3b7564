package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

type stormResult struct {
	Target      string  `json:"target"`
	TLSTarget   string  `json:"tls_target,omitempty"`
	Clients     int     `json:"clients"`
	TLSClients  int     `json:"tls_clients"`
	Echoing     int64   `json:"echoing"`
	Failed      int64   `json:"failed"`
	Retries     int64   `json:"retries"`
	AllEchoingS float64 `json:"all_echoing_s"` // storm start until the last client's echo came back; 0 unless all did
	// Handshake: from a client's first dial to its 101 (TCP connect, TLS, upgrade,
	// and any retries), over the clients that got one.
	HandshakeP50MS   float64  `json:"handshake_p50_ms"`
	HandshakeP99MS   float64  `json:"handshake_p99_ms"`
	HandshakeMaxMS   float64  `json:"handshake_max_ms"`
	PlainP99MS       float64  `json:"plain_handshake_p99_ms"`
	TLSP99MS         float64  `json:"tls_handshake_p99_ms"`
	OverOneSecond    int      `json:"handshakes_over_1s"`
	ProxyRSSBeforeKB int64    `json:"proxy_rss_before_kb"`
	ProxyPeakRSSKB   int64    `json:"proxy_peak_rss_kb"` // highest VmRSS sum sampled every 20 ms during the storm
	ProxyHWMKB       int64    `json:"proxy_hwm_kb"`      // VmHWM summed over the proxy's processes at the end
	ProxyCPUSec      float64  `json:"proxy_cpu_s"`
	ClientCPUSec     float64  `json:"client_cpu_s"` // this process: the storm's clients share the proxy's 2 cores
	Errors           []string `json:"errors,omitempty"`
}

// cmdStorm is a reconnect storm: --n clients (the first --tls-n of them over
// TLS 1.3, offering X25519 first as browsers do) are all started at once; each
// dials, upgrades, sends one 16-byte message and waits for its echo, retrying
// after 200 ms on failure until --timeout. Every tunnel is held open until all
// clients have echoed (or failed), then closed. Reports the time until all are
// echoing, the handshake time distribution and, with --proxy-pid, the proxy's
// peak RSS and CPU.
func cmdStorm(args []string) {
	fs := flag.NewFlagSet("storm", flag.ExitOnError)
	target := fs.String("target", "", "ws:// URL")
	tlsTarget := fs.String("tls-target", "", "wss:// URL for the TLS clients")
	n := fs.Int("n", 8000, "clients in all")
	tlsN := fs.Int("tls-n", 4000, "of which over TLS (needs --tls-target)")
	caFile := fs.String("ca", "", "PEM file of the certificate the TLS clients trust")
	serverName := fs.String("server-name", "localhost", "TLS server name (SNI)")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole storm")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) to measure; 0 = none")
	_ = fs.Parse(args)
	if *target == "" || *n <= 0 {
		fatalf("storm: --target and --n > 0 required")
	}
	if *tlsN > *n {
		*tlsN = *n
	}
	if *tlsN > 0 && *tlsTarget == "" {
		fatalf("storm: --tls-n > 0 needs --tls-target")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	plain := newDialer(srcs, 1024)
	plain.HandshakeTimeout = *timeout
	secure := newDialer(srcs, 1024)
	secure.HandshakeTimeout = *timeout
	if *tlsN > 0 {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(*caFile)
		if err != nil || !pool.AppendCertsFromPEM(pem) {
			fatalf("storm: --ca %q: no PEM certificate (%v)", *caFile, err)
		}
		secure.TLSClientConfig = &tls.Config{
			RootCAs:    pool,
			ServerName: *serverName,
			MinVersion: tls.VersionTLS13,
			MaxVersion: tls.VersionTLS13,
			// Go would offer a post-quantum hybrid first; a browser's classical share is X25519.
			CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
			// No session cache: a storm's clients come from restarted pods or new devices.
			ClientSessionCache: nil,
		}
	}

	// The TLS clients are spread evenly among the others (every second one for half).
	isTLS := func(i int) bool { return (i+1)*(*tlsN)/(*n) > i*(*tlsN)/(*n) }
	res := stormResult{Target: *target, Clients: *n, TLSClients: *tlsN}
	if *tlsN > 0 {
		res.TLSTarget = *tlsTarget
	}
	var pids []int
	var cpu0 float64
	if *pid > 0 {
		ps, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		pids, cpu0, res.ProxyRSSBeforeKB = ps.PIDs, ps.CPUSec, ps.RSSKB
	}

	client0 := oursCPU(0)
	errs := newErrSampler()
	var echoing, failed, retries atomic.Int64
	hs := make([]time.Duration, *n) // 0 = never upgraded
	echoAt := make([]time.Duration, *n)
	conns := make([]*websocket.Conn, *n)
	hello := []byte("hello, wsgate!!!")
	start := make(chan struct{})
	var ready, wg sync.WaitGroup
	var t0 time.Time
	for i := 0; i < *n; i++ {
		ready.Add(1)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d, url := plain, *target
			if isTLS(i) {
				d, url = secure, *tlsTarget
			}
			ready.Done()
			<-start
			first := time.Now()
			deadline := t0.Add(*timeout)
			for attempt := 0; ; attempt++ {
				if attempt > 0 {
					retries.Add(1)
					time.Sleep(200 * time.Millisecond)
				}
				if time.Now().After(deadline) {
					failed.Add(1)
					return
				}
				c, _, err := d.Dial(url, nil)
				if err != nil {
					errs.add(err)
					continue
				}
				hs[i] = time.Since(first)
				_ = c.SetReadDeadline(deadline)
				_ = c.SetWriteDeadline(deadline)
				if err := c.WriteMessage(websocket.BinaryMessage, hello); err != nil {
					errs.add(err)
					c.Close()
					continue
				}
				_, msg, err := c.ReadMessage()
				if err != nil || !bytes.Equal(msg, hello) {
					if err == nil {
						err = fmt.Errorf("echo differs")
					}
					errs.add(err)
					c.Close()
					continue
				}
				echoAt[i] = time.Since(t0)
				conns[i] = c
				echoing.Add(1)
				return
			}
		}(i)
	}
	ready.Wait()

	// Sample the proxy's RSS while the storm runs.
	stopSampling := make(chan struct{})
	sampled := make(chan int64)
	go func() {
		var peak int64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if v := rssOf(pids); v > peak {
				peak = v
			}
			select {
			case <-stopSampling:
				sampled <- peak
				return
			case <-tick.C:
			}
		}
	}()

	t0 = time.Now()
	close(start)
	wg.Wait()
	close(stopSampling)
	res.ProxyPeakRSSKB = <-sampled
	res.ClientCPUSec = oursCPU(0) - client0
	if *pid > 0 {
		if ps, err := readProcTree(*pid); err == nil {
			res.ProxyCPUSec = ps.CPUSec - cpu0
		}
		res.ProxyHWMKB = hwmOf(pids)
	}
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}

	res.Echoing, res.Failed, res.Retries = echoing.Load(), failed.Load(), retries.Load()
	if res.Echoing == int64(*n) {
		var last time.Duration
		for _, e := range echoAt {
			if e > last {
				last = e
			}
		}
		res.AllEchoingS = last.Seconds()
	}
	var all, plainHs, tlsHs []time.Duration
	for i, h := range hs {
		if h == 0 {
			continue
		}
		all = append(all, h)
		if h > time.Second {
			res.OverOneSecond++
		}
		if isTLS(i) {
			tlsHs = append(tlsHs, h)
		} else {
			plainHs = append(plainHs, h)
		}
	}
	for _, s := range [][]time.Duration{all, plainHs, tlsHs} {
		sort.Slice(s, func(a, b int) bool { return s[a] < s[b] })
	}
	ms := func(us float64) float64 { return us / 1000 }
	res.HandshakeP50MS = ms(percentile(all, 0.50))
	res.HandshakeP99MS = ms(percentile(all, 0.99))
	res.HandshakeMaxMS = ms(percentile(all, 1))
	res.PlainP99MS = ms(percentile(plainHs, 0.99))
	res.TLSP99MS = ms(percentile(tlsHs, 0.99))
	res.Errors = errs.samples()
	logf("storm: %d/%d echoing after %.2fs, %d failed, %d retries", res.Echoing, *n, time.Since(t0).Seconds(), res.Failed, res.Retries)
	emitJSON(res)
}

// rssOf sums VmRSS over pids (KiB).
func rssOf(pids []int) int64 { return statusSum(pids, "VmRSS:") }

// hwmOf sums VmHWM (each process's peak RSS) over pids (KiB).
func hwmOf(pids []int) int64 { return statusSum(pids, "VmHWM:") }

func statusSum(pids []int, field string) int64 {
	var t int64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, field) {
				t += kbField(line)
			}
		}
	}
	return t
}
