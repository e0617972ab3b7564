package main

// The HTTP/2 rows of the benchmark: WebSockets as extended CONNECT streams
// (RFC 8441) over h2c connections, through a proxy that speaks HTTP/1.1 to the
// echo backend.
//
//	loadgen h2-idle        --target HOST:PORT --conns 40 --streams 100 [--proxy-pid PID]
//	loadgen h2-throughput  --target HOST:PORT --conns 1 --streams 100 --window 8 [--proxy-pid PID]
//	loadgen h2-handshakes  --target HOST:PORT --workers 16 --duration 10s [--proxy-pid PID]

import (
	"flag"
	"math/rand"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

type h2IdleResult struct {
	idleResult
	Conns          int `json:"h2_connections"`
	StreamsPerConn int `json:"streams_per_connection"`
}

func h2Dial(target string, srcs []net.IP, i int) (*h2Conn, error) {
	var src net.IP
	if len(srcs) > 0 {
		src = srcs[i%len(srcs)]
	}
	return dialH2(target, src)
}

// cmdH2Idle opens --conns h2c connections with --streams tunnels each, sends one
// 16-byte message per tunnel and waits for its echo, holds them idle and
// measures the proxy's memory as `idle` does.
func cmdH2Idle(args []string) {
	fs := flag.NewFlagSet("h2-idle", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT of an h2c listener")
	path := fs.String("path", "/", "request path")
	conns := fs.Int("conns", 40, "HTTP/2 connections")
	streams := fs.Int("streams", 100, "tunnels per connection")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	conc := fs.Int("concurrency", 64, "tunnels being opened at once")
	warmup := fs.Int("warmup", 64, "tunnels (on one connection) opened and closed before the 'before' measurement")
	settle := fs.Duration("settle", 5*time.Second, "wait after all tunnels are open before measuring")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) to measure; 0 = none")
	measureClose := fs.Bool("measure-close", false, "then close every connection and measure again after --settle")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("h2-idle: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	errs := newErrSampler()
	hello := wsFrame(0x1, []byte("hello, wsgate!!!"))

	// openOne opens a tunnel on c and round-trips one message on it.
	openOne := func(c *h2Conn) (*h2Stream, error) {
		echo := make(chan struct{}, 1)
		s, err := c.openTunnel(*path, 10*time.Second, func(op byte, _ []byte) {
			select {
			case echo <- struct{}{}:
			default:
			}
		})
		if err != nil {
			return nil, err
		}
		if err := s.write(hello, false); err != nil {
			return nil, err
		}
		select {
		case <-echo:
			return s, nil
		case <-s.ended:
			return nil, errAfter("the tunnel ended before the echo")
		case <-time.After(10 * time.Second):
			return nil, errAfter("no echo within 10s")
		}
	}

	res := h2IdleResult{Conns: *conns, StreamsPerConn: *streams}
	res.Target, res.N, res.EchoOnce = *target, *conns**streams, true
	if *pid > 0 && *warmup > 0 {
		c, err := h2Dial(*target, srcs, 0)
		if err != nil {
			fatalf("h2-idle: warm-up connection: %v", err)
		}
		var wg sync.WaitGroup
		for i := 0; i < *warmup; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := openOne(c); err != nil {
					errs.add(err)
				}
			}()
		}
		wg.Wait()
		c.Close()
		time.Sleep(2 * time.Second)
	}
	if *pid > 0 {
		b, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.Before = &b
	}

	start := time.Now()
	cs := make([]*h2Conn, *conns)
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		opened []*h2Stream
		sem    = make(chan struct{}, *conc)
	)
	for i := range cs {
		c, err := h2Dial(*target, srcs, i)
		if err != nil {
			fatalf("h2-idle: connection %d: %v", i, err)
		}
		cs[i] = c
		for j := 0; j < *streams; j++ {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				s, err := openOne(c)
				if err != nil {
					errs.add(err)
					return
				}
				mu.Lock()
				opened = append(opened, s)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	res.OpenSeconds = time.Since(start).Seconds()
	res.Opened = len(opened)
	res.Failed = errs.n.Load()
	logf("READY opened=%d/%d on %d connections, failed=%d in %.1fs", res.Opened, res.N, *conns, res.Failed, res.OpenSeconds)

	time.Sleep(*settle)
	res.SettleSeconds = settle.Seconds()
	for _, s := range opened {
		select {
		case <-s.ended:
			res.DroppedInSettle++
		default:
		}
	}
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
	for _, c := range cs {
		c.Close()
	}
	if *pid > 0 && *measureClose {
		time.Sleep(*settle)
		a, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.AfterClose = &a
		res.AnonKBLeftClosed = a.AnonKB - res.Before.AnonKB
		res.RSSKBLeftClosed = a.RSSKB - res.Before.RSSKB
	}
	res.Errors = errs.samples()
	emitJSON(res)
}

type errString string

func (e errString) Error() string { return string(e) }
func errAfter(s string) error     { return errString(s) }

type h2ThroughputResult struct {
	throughputResult
	H2Conns int `json:"h2_connections"`
}

// cmdH2Throughput is `throughput` on HTTP/2 streams: --streams tunnels on each of
// --conns connections, each keeping --window 1 KiB binary messages in flight.
func cmdH2Throughput(args []string) {
	fs := flag.NewFlagSet("h2-throughput", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT of an h2c listener")
	path := fs.String("path", "/", "request path")
	conns := fs.Int("conns", 1, "HTTP/2 connections")
	streams := fs.Int("streams", 100, "tunnels per connection")
	window := fs.Int("window", 8, "messages in flight per tunnel")
	size := fs.Int("size", 1024, "message payload bytes")
	messages := fs.Int64("messages", 500000, "client->backend messages in total (each is echoed: 2x relayed)")
	duration := fs.Duration("duration", 20*time.Second, "time bound on sending")
	rate := fs.Float64("rate", 0, "client->backend messages per second in total (0 = as fast as the window allows)")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) whose CPU to measure; 0 = none")
	backendPID := fs.Int("backend-pid", 0, "backend process, to tell foreign CPU load from ours; 0 = unknown")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("h2-throughput: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	errs := newErrSampler()
	payload := make([]byte, *size)
	rand.New(rand.NewSource(1)).Read(payload)
	// Every message is the same bytes: one masked frame, shared by all sends.
	frame := wsFrame(0x2, payload)

	type tunnel struct {
		s    *h2Stream
		sem  chan struct{}
		back chan struct{} // the warm-up echo
	}
	var echoed, bad atomic.Int64
	var measuring atomic.Bool
	var tunnels []*tunnel
	var cs []*h2Conn
	for i := 0; i < *conns; i++ {
		c, err := h2Dial(*target, srcs, i)
		if err != nil {
			fatalf("h2-throughput: connection %d: %v", i, err)
		}
		cs = append(cs, c)
		for j := 0; j < *streams; j++ {
			t := &tunnel{sem: make(chan struct{}, *window), back: make(chan struct{}, 1)}
			s, err := c.openTunnel(*path, 10*time.Second, func(op byte, p []byte) {
				if !measuring.Load() {
					select {
					case t.back <- struct{}{}:
					default:
					}
					return
				}
				if len(p) != *size {
					bad.Add(1)
				}
				echoed.Add(1)
				select {
				case <-t.sem:
				default:
				}
			})
			if err != nil {
				fatalf("h2-throughput: tunnel %d/%d: %v", i, j, err)
			}
			t.s = s
			tunnels = append(tunnels, t)
		}
	}
	for _, t := range tunnels {
		if err := t.s.write(frame, false); err != nil {
			fatalf("h2-throughput: warm-up: %v", err)
		}
	}
	for i, t := range tunnels {
		select {
		case <-t.back:
		case <-time.After(10 * time.Second):
			fatalf("h2-throughput: no warm-up echo on tunnel %d", i)
		}
	}

	res := h2ThroughputResult{H2Conns: *conns}
	res.Target, res.Conns, res.Window, res.Size, res.Rate = *target, len(tunnels), *window, *size, *rate
	if *pid > 0 {
		b, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.ProxyBefore = &b
	}
	ours0 := oursCPU(*backendPID)
	measuring.Store(true)

	var gap time.Duration
	if *rate > 0 {
		gap = time.Duration(float64(time.Second) * float64(len(tunnels)) / *rate)
	}
	var claimed, sent atomic.Int64
	start := time.Now()
	stopAt := start.Add(*duration)
	var wg sync.WaitGroup
	for _, t := range tunnels {
		wg.Add(1)
		go func(t *tunnel) {
			defer wg.Done()
			next := time.Now().Add(time.Duration(rand.Int63n(int64(gap) + 1)))
			for {
				if gap > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					next = next.Add(gap)
				}
				select {
				case t.sem <- struct{}{}:
				case <-t.s.ended:
					errs.add(errAfter("a tunnel ended during the run"))
					return
				case <-time.After(time.Until(stopAt.Add(15 * time.Second))):
					errs.add(errAfter("no echo within 15s"))
					return
				}
				if time.Now().After(stopAt) || claimed.Add(1) > *messages {
					<-t.sem
					break
				}
				if err := t.s.write(frame, false); err != nil {
					errs.add(err)
					return
				}
				sent.Add(1)
			}
			// Drain: wait (bounded) until every message in flight came back.
			drainBy := time.Now().Add(15 * time.Second)
			for len(t.sem) > 0 && time.Now().Before(drainBy) {
				time.Sleep(time.Millisecond)
			}
		}(t)
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
		res.ProxyCPUUtil = res.ProxyCPUSec / elapsed.Seconds()
		res.MachineCores = (a.MachineBusyS - res.ProxyBefore.MachineBusyS) / elapsed.Seconds()
		if *backendPID > 0 {
			res.ForeignCores = (a.MachineBusyS - res.ProxyBefore.MachineBusyS - res.ProxyCPUSec - (oursCPU(*backendPID) - ours0)) / elapsed.Seconds()
		}
	}
	for _, c := range cs {
		c.Close()
	}
	res.finish(sent.Load(), echoed.Load(), bad.Load(), elapsed, *pid > 0, *messages, errs)
	emitJSON(res)
}

// cmdH2Handshakes opens and closes tunnels on ONE HTTP/2 connection as fast as
// --workers parallel loops can: extended CONNECT (200 checked), masked Close
// 1000, the peer's Close and end of stream, RST_STREAM(CANCEL) if still needed. Bounded by --duration and --max.
func cmdH2Handshakes(args []string) {
	fs := flag.NewFlagSet("h2-handshakes", flag.ExitOnError)
	target := fs.String("target", "", "HOST:PORT of an h2c listener")
	path := fs.String("path", "/", "request path")
	workers := fs.Int("workers", 16, "parallel open/close loops (streams in flight)")
	duration := fs.Duration("duration", 10*time.Second, "time bound")
	max := fs.Int64("max", 500000, "count bound")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) whose CPU to measure; 0 = none")
	backendPID := fs.Int("backend-pid", 0, "backend process, to tell foreign CPU load from ours; 0 = unknown")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("h2-handshakes: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	c, err := h2Dial(*target, srcs, 0)
	if err != nil {
		fatalf("h2-handshakes: %v", err)
	}
	defer c.Close()
	errs := newErrSampler()
	res := handshakeResult{Target: *target, Workers: *workers}
	if *pid > 0 {
		b, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.ProxyBefore = &b
	}
	ours0 := oursCPU(*backendPID)
	closeMsg := closeFrame()
	var ok, claimed atomic.Int64
	start := time.Now()
	stopAt := start.Add(*duration)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stopAt) && claimed.Add(1) <= *max {
				closed := make(chan struct{}, 1)
				s, err := c.openTunnel(*path, 10*time.Second, func(op byte, _ []byte) {
					if op == 0x8 {
						select {
						case closed <- struct{}{}:
						default:
						}
					}
				})
				if err != nil {
					errs.add(err)
					select {
					case <-c.done:
						return
					default:
						continue
					}
				}
				if err := s.write(closeMsg, false); err != nil {
					errs.add(err)
					s.reset()
					continue
				}
				select {
				case <-closed:
				case <-s.ended:
				case <-time.After(5 * time.Second):
					errs.add(errAfter("no Close from the peer within 5s"))
				}
				// Like Chromium: once the close handshake is over and the server
				// ended the stream, cancel what is left of it. (A DATA frame with
				// END_STREAM here would race the server's RST_STREAM.)
				select {
				case <-s.ended:
					s.cancel()
					ok.Add(1)
				case <-time.After(5 * time.Second):
					s.cancel()
					errs.add(errAfter("the server did not end the stream within 5s of the Close"))
				}
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
	res.ErrorCount = errs.n.Load()
	res.Errors = errs.samples()
	res.Seconds = elapsed.Seconds()
	res.PerSec = float64(res.Handshakes) / res.Seconds
	if res.Handshakes > 0 && *pid > 0 {
		res.CPUUSPerHandsh = res.ProxyCPUSec * 1e6 / float64(res.Handshakes)
	}
	emitJSON(res)
}
