package main

import (
	"flag"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type idleResult struct {
	Target          string    `json:"target"`
	N               int       `json:"n"`
	Opened          int       `json:"opened"`
	Failed          int64     `json:"failed"`
	DroppedInSettle int64     `json:"dropped_while_settling"`
	EchoOnce        bool      `json:"echo_once"`
	OpenSeconds     float64   `json:"open_seconds"`
	SettleSeconds   float64   `json:"settle_seconds"`
	Before          *procStat `json:"proxy_before,omitempty"`
	After           *procStat `json:"proxy_after,omitempty"`
	AnonKBPerTunnel float64   `json:"anon_kb_per_tunnel"`
	RSSKBPerTunnel  float64   `json:"rss_kb_per_tunnel"`
	PrivKBPerTunnel float64   `json:"private_kb_per_tunnel"`
	RampSeconds     float64   `json:"ramp_seconds"`
	// AfterClose is read --settle after every tunnel was closed (with --measure-close).
	AfterClose       *procStat `json:"proxy_after_close,omitempty"`
	AnonKBLeftClosed int64     `json:"anon_kb_left_after_close"`
	RSSKBLeftClosed  int64     `json:"rss_kb_left_after_close"`
	Errors          []string  `json:"errors,omitempty"`
}

// cmdIdle opens N tunnels, holds them idle, and (with --proxy-pid) measures the
// proxy's memory before (after a warm-up) and after the tunnels are open and
// settled.
func cmdIdle(args []string) {
	fs := flag.NewFlagSet("idle", flag.ExitOnError)
	target := fs.String("target", "", "ws:// URL")
	n := fs.Int("n", 8000, "tunnels to open")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses (range or list)")
	conc := fs.Int("concurrency", 64, "parallel dials while opening")
	echoOnce := fs.Bool("echo-once", true, "send one 16-byte message per tunnel and wait for its echo before going idle")
	warmup := fs.Int("warmup", 64, "tunnels opened and closed before the 'before' measurement")
	settle := fs.Duration("settle", 5*time.Second, "wait after all tunnels are open before measuring")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) to measure; 0 = none")
	hold := fs.Duration("hold", 0, "hold the tunnels this long after measuring (0 with no --proxy-pid: until SIGINT/SIGTERM, max 1h)")
	openTimeout := fs.Duration("open-timeout", 180*time.Second, "bound on the opening phase")
	ramp := fs.Duration("ramp", 0, "spread the opens evenly over this long (0 = a burst: as fast as --concurrency allows)")
	measureClose := fs.Bool("measure-close", false, "after measuring, close every tunnel and measure the proxy again after --settle")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("idle: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	dialer := newDialer(srcs, 1024)
	errs := newErrSampler()
	hello := []byte("hello, wsgate!!!") // 16 bytes

	openOne := func() (*websocket.Conn, error) {
		c, _, err := dialer.Dial(*target, nil)
		if err != nil {
			return nil, err
		}
		if *echoOnce {
			_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(websocket.TextMessage, hello); err != nil {
				c.Close()
				return nil, err
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, _, err := c.ReadMessage(); err != nil {
				c.Close()
				return nil, err
			}
			_ = c.SetReadDeadline(time.Time{})
			_ = c.SetWriteDeadline(time.Time{})
		}
		return c, nil
	}

	res := idleResult{Target: *target, N: *n, EchoOnce: *echoOnce, RampSeconds: ramp.Seconds()}

	if *pid > 0 && *warmup > 0 {
		var wg sync.WaitGroup
		sem := make(chan struct{}, *conc)
		for i := 0; i < *warmup; i++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c, err := openOne()
				if err != nil {
					errs.add(err)
					return
				}
				_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(2*time.Second))
				_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
				for {
					if _, _, err := c.ReadMessage(); err != nil {
						break
					}
				}
				c.Close()
			}()
		}
		wg.Wait()
		time.Sleep(2 * time.Second)
	}
	if *pid > 0 {
		b, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.Before = &b
	}

	var (
		mu       sync.Mutex
		conns    = make([]*websocket.Conn, 0, *n)
		next     atomic.Int64
		closing  atomic.Bool
		dropped  atomic.Int64
		deadline = time.Now().Add(*openTimeout)
		wg       sync.WaitGroup
	)
	start := time.Now()
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := next.Add(1)
				if i > int64(*n) {
					return
				}
				if *ramp > 0 {
					// Tunnel i opens at i/n of the ramp: a slow, even arrival.
					time.Sleep(time.Until(start.Add(time.Duration(float64(*ramp) * float64(i-1) / float64(*n)))))
				}
				c, err := openOne()
				if err != nil {
					errs.add(err)
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
				go func() {
					for {
						if _, _, err := c.ReadMessage(); err != nil {
							if !closing.Load() {
								dropped.Add(1)
							}
							return
						}
					}
				}()
			}
		}()
	}
	wg.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	res.Opened = len(conns)
	res.Failed = errs.n.Load()
	logf("READY opened=%d/%d failed=%d in %.1fs", res.Opened, *n, res.Failed, res.OpenSeconds)

	dropped.Store(0)
	time.Sleep(*settle)
	res.SettleSeconds = settle.Seconds()
	res.DroppedInSettle = dropped.Load()
	if *pid > 0 {
		a, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.After = &a
		if res.Opened > 0 {
			res.AnonKBPerTunnel = float64(a.AnonKB-res.Before.AnonKB) / float64(res.Opened)
			res.RSSKBPerTunnel = float64(a.RSSKB-res.Before.RSSKB) / float64(res.Opened)
			res.PrivKBPerTunnel = float64(a.PrivKB-res.Before.PrivKB) / float64(res.Opened)
		}
	}
	switch {
	case *hold > 0:
		time.Sleep(*hold)
	case *pid == 0:
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
		select {
		case <-sig:
		case <-time.After(time.Hour):
		}
	}
	res.Errors = errs.samples()
	closing.Store(true)
	if *measureClose && *pid > 0 {
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(*settle)
		a, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.AfterClose = &a
		res.AnonKBLeftClosed = a.AnonKB - res.Before.AnonKB
		res.RSSKBLeftClosed = a.RSSKB - res.Before.RSSKB
	}
	emitJSON(res)
	// Exiting closes every socket at once (FIN); the proxy tears its tunnels down.
	os.Exit(0)
}
