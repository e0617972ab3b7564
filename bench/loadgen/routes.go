package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type routesResult struct {
	Routes             int       `json:"routes"`
	Baseline           *procStat `json:"wsgate_one_route"`
	Loaded             *procStat `json:"wsgate_routes_loaded"`
	Used               *procStat `json:"wsgate_after_one_tunnel_each"`
	AnonKBPerRoute     float64   `json:"anon_kb_per_route"`
	RSSKBPerRoute      float64   `json:"rss_kb_per_route"`
	AnonKBPerUsedRoute float64   `json:"anon_kb_per_route_after_traffic"`
	LoadSeconds        float64   `json:"first_load_live_seconds"`
	ReloadSeconds      float64   `json:"reload_live_seconds"`
	MetricsBytesIdle   int       `json:"metrics_bytes_no_traffic"`
	MetricsBytesOpen   int       `json:"metrics_bytes_one_open_tunnel_each"`
	MetricsBytesUsed   int       `json:"metrics_bytes_after_one_tunnel_each"`
	MetricsGzipUsed    int       `json:"metrics_gzip_bytes_after_one_tunnel_each"`
	SeriesUsed         int       `json:"series_after_one_tunnel_each"`
	Tunnels            int64     `json:"tunnels_ok"`
	TunnelErrors       int64     `json:"tunnel_errors"`
	Errors             []string  `json:"errors,omitempty"`
}

// cmdRoutes measures wsgate with many routes in one file: memory per route,
// /metrics size with no traffic and after one tunnel on each route, and how
// long a load and a reload of that file take until the changed route is live.
func cmdRoutes(args []string) {
	fs := flag.NewFlagSet("routes", flag.ExitOnError)
	bin := fs.String("wsgate", "", "wsgate binary")
	backend := fs.String("backend", "", "echo backend host:port")
	n := fs.Int("n", 5000, "routes")
	dir := fs.String("dir", "", "work directory (route file, log)")
	listen := fs.String("listen", "127.0.0.1:18480", "wsgate --listen")
	admin := fs.String("admin", "127.0.0.1:19490", "wsgate --admin-listen")
	workers := fs.Int("workers", 16, "parallel tunnels while touching every route")
	_ = fs.Parse(args)
	if *bin == "" || *backend == "" || *dir == "" {
		fatalf("routes: --wsgate, --backend and --dir are required")
	}
	cfg := filepath.Join(*dir, "routes")
	_ = os.MkdirAll(cfg, 0o755)
	file := filepath.Join(cfg, "routes.yaml")
	writeRoutes := func(count int, lastPrefix string) {
		var b strings.Builder
		route := func(name, path string) {
			fmt.Fprintf(&b, "---\napiVersion: wsgate.io/v1alpha1\nkind: WebSocketRoute\nmetadata: {name: %s}\n"+
				"spec:\n  path: {type: PathPrefix, value: %s}\n  backends: [{address: \"%s\"}]\n"+
				"  keepalive: {interval: 30s, timeout: 10s}\n", name, path, *backend)
		}
		route("warm", "/warm")
		for i := 0; i < count; i++ {
			p := fmt.Sprintf("/r%d", i)
			if i == count-1 && lastPrefix != "" {
				p = fmt.Sprintf("%s%d", lastPrefix, i)
			}
			route(fmt.Sprintf("r%d", i), p)
		}
		tmp := file + ".tmp"
		if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
			fatalf("%v", err)
		}
		if err := os.Rename(tmp, file); err != nil {
			fatalf("%v", err)
		}
	}
	writeRoutes(0, "")
	logFile, err := os.Create(filepath.Join(*dir, "wsgate.log"))
	if err != nil {
		fatalf("%v", err)
	}
	cmd := exec.Command(*bin, "serve", "--config", cfg, "--listen", *listen, "--admin-listen", *admin)
	cmd.Env = append(os.Environ(), "RUST_LOG=warn")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fatalf("start wsgate: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }()
	pid := cmd.Process.Pid
	base := "ws://" + *listen
	dialer := newDialer(nil, 1024)
	dialer.HandshakeTimeout = 2 * time.Second
	echo := func(path string) error {
		c, _, err := dialer.Dial(base+path, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			return err
		}
		_, _, err = c.ReadMessage()
		if err != nil {
			return err
		}
		_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
		_, _, _ = c.ReadMessage()
		return nil
	}
	// untilLive polls an upgrade on path every 2 ms, for at most 30 s.
	untilLive := func(path string, since time.Time) float64 {
		for time.Since(since) < 30*time.Second {
			c, resp, err := dialer.Dial(base+path, nil)
			if err == nil {
				c.Close()
				return time.Since(since).Seconds()
			}
			if resp != nil && resp.StatusCode != 404 {
				fatalf("routes: %s answered %d", path, resp.StatusCode)
			}
			time.Sleep(2 * time.Millisecond)
		}
		fatalf("routes: %s not live after 30 s", path)
		return 0
	}
	scrape := func() []byte {
		r, err := http.Get("http://" + *admin + "/metrics")
		if err != nil {
			fatalf("scrape: %v", err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return b
	}
	stat := func() *procStat {
		time.Sleep(2 * time.Second)
		ps, err := readProcTree(pid)
		if err != nil {
			fatalf("%v", err)
		}
		return &ps
	}
	res := routesResult{Routes: *n}
	untilLive("/warm", time.Now())
	for i := 0; i < 32; i++ {
		_ = echo("/warm")
	}
	res.Baseline = stat()

	start := time.Now()
	writeRoutes(*n, "")
	res.LoadSeconds = untilLive(fmt.Sprintf("/r%d", *n-1), start)
	logf("routes: %d routes live %.3f s after the file was written", *n, res.LoadSeconds)
	res.Loaded = stat()
	res.MetricsBytesIdle = len(scrape())
	res.AnonKBPerRoute = float64(res.Loaded.AnonKB-res.Baseline.AnonKB) / float64(*n)
	res.RSSKBPerRoute = float64(res.Loaded.RSSKB-res.Baseline.RSSKB) / float64(*n)

	// A reload of the full file with one route changed: the usual edit.
	start = time.Now()
	writeRoutes(*n, "/s")
	res.ReloadSeconds = untilLive(fmt.Sprintf("/s%d", *n-1), start)
	logf("routes: reload of %d routes live after %.3f s", *n, res.ReloadSeconds)
	writeRoutes(*n, "")
	untilLive(fmt.Sprintf("/r%d", *n-1), time.Now())

	// One tunnel on each route: opened and echoed, all held open, scraped, closed.
	var ok, bad atomic.Int64
	errs := newErrSampler()
	conns := make([]*websocket.Conn, *n)
	var wg sync.WaitGroup
	next := atomic.Int64{}
	deadline := time.Now().Add(120 * time.Second)
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := int(next.Add(1) - 1)
				if i >= *n {
					return
				}
				c, _, err := dialer.Dial(fmt.Sprintf("%s/r%d", base, i), nil)
				if err == nil {
					_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
					if err = c.WriteMessage(websocket.TextMessage, []byte("hi")); err == nil {
						_, _, err = c.ReadMessage()
					}
				}
				if err != nil {
					bad.Add(1)
					errs.add(err)
					if c != nil {
						c.Close()
					}
					continue
				}
				conns[i] = c
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	res.MetricsBytesOpen = len(scrape())
	for _, c := range conns {
		if c != nil {
			_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""))
			_, _, _ = c.ReadMessage()
			c.Close()
		}
	}
	res.Tunnels, res.TunnelErrors, res.Errors = ok.Load(), bad.Load(), errs.samples()
	res.Used = stat()
	used := scrape()
	res.MetricsBytesUsed = len(used)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(used)
	_ = zw.Close()
	res.MetricsGzipUsed = gz.Len()
	for _, l := range bytes.Split(used, []byte("\n")) {
		if len(l) > 0 && l[0] != '#' {
			res.SeriesUsed++
		}
	}
	res.AnonKBPerUsedRoute = float64(res.Used.AnonKB-res.Baseline.AnonKB) / float64(*n)
	emitJSON(res)
}

