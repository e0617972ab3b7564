package main

import (
	"flag"
	"io"
	"math/rand"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

type throughputResult struct {
	Target        string    `json:"target"`
	Conns         int       `json:"conns"`
	Window        int       `json:"window"`
	Rate          float64   `json:"rate"` // offered client->backend messages/s; 0 = unpaced
	Size          int       `json:"size"`
	Sent          int64     `json:"sent"`
	Echoed        int64     `json:"echoed"`
	Relayed       int64     `json:"relayed"` // sent+echoed: messages crossing the proxy, both directions
	BadEchoes     int64     `json:"bad_echoes"`
	Seconds       float64   `json:"seconds"`
	RelayedPerSec float64   `json:"relayed_per_s"`
	ProxyBefore   *procStat `json:"proxy_before,omitempty"`
	ProxyAfter    *procStat `json:"proxy_after,omitempty"`
	ProxyCPUSec   float64   `json:"proxy_cpu_s"`
	ProxyCPUUtil  float64   `json:"proxy_cpu_util"` // proxy cores busy on average
	MachineCores  float64   `json:"machine_busy_cores"`
	ForeignCores  float64   `json:"foreign_busy_cores"` // machine minus proxy, backend and this client
	CPUSecPerMRel float64   `json:"cpu_s_per_million_relayed"`
	Errors        []string  `json:"errors,omitempty"`
	ErrorCount    int64     `json:"error_count"`
	BoundedBy     string    `json:"bounded_by"`
}

// cmdThroughput pushes fixed-size binary messages through --conns tunnels to
// the echo backend, each tunnel keeping up to --window messages in flight,
// until --messages have been sent or --duration has elapsed.
func cmdThroughput(args []string) {
	fs := flag.NewFlagSet("throughput", flag.ExitOnError)
	target := fs.String("target", "", "ws:// URL")
	conns := fs.Int("conns", 100, "tunnels")
	window := fs.Int("window", 8, "messages in flight per tunnel")
	size := fs.Int("size", 1024, "message payload bytes")
	messages := fs.Int64("messages", 500000, "client->backend messages to send in total (each is echoed: 2x relayed)")
	duration := fs.Duration("duration", 20*time.Second, "time bound on sending")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	pid := fs.Int("proxy-pid", 0, "proxy process (tree) whose CPU to measure; 0 = none")
	backendPID := fs.Int("backend-pid", 0, "backend process, to tell foreign CPU load from ours; 0 = unknown")
	rate := fs.Float64("rate", 0, "client->backend messages per second in total (0 = as fast as the window allows)")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("throughput: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	dialer := newDialer(srcs, 4096)
	errs := newErrSampler()
	payload := make([]byte, *size)
	rand.New(rand.NewSource(1)).Read(payload)

	// Dial all tunnels and round-trip one message on each before measuring.
	cs := make([]*websocket.Conn, *conns)
	var wg sync.WaitGroup
	for i := range cs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, _, err := dialer.Dial(*target, nil)
			if err != nil {
				errs.add(err)
				return
			}
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(websocket.BinaryMessage, payload); err != nil {
				errs.add(err)
				c.Close()
				return
			}
			if _, _, err := c.ReadMessage(); err != nil {
				errs.add(err)
				c.Close()
				return
			}
			cs[i] = c
		}(i)
	}
	wg.Wait()
	if errs.n.Load() > 0 {
		fatalf("throughput: %d tunnels failed to open: %v", errs.n.Load(), errs.samples())
	}

	res := throughputResult{Target: *target, Conns: *conns, Window: *window, Size: *size, Rate: *rate}
	if *pid > 0 {
		b, err := readProcTree(*pid)
		if err != nil {
			fatalf("%v", err)
		}
		res.ProxyBefore = &b
	}
	ours0 := oursCPU(*backendPID)

	// With --rate, each tunnel sends on its own schedule (random phase), so the
	// proxy sees the same offered load whatever its speed.
	var gap time.Duration
	if *rate > 0 {
		gap = time.Duration(float64(time.Second) * float64(*conns) / *rate)
	}
	var claimed, sent, echoed, bad atomic.Int64
	start := time.Now()
	stopAt := start.Add(*duration)
	for _, c := range cs {
		wg.Add(1)
		go func(c *websocket.Conn) {
			defer wg.Done()
			sem := make(chan struct{}, *window)
			var closing atomic.Bool
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				for {
					_ = c.SetReadDeadline(stopAt.Add(15 * time.Second))
					_, r, err := c.NextReader()
					var n int64
					if err == nil {
						n, err = io.Copy(io.Discard, r)
					}
					if err != nil {
						if !closing.Load() {
							errs.add(err)
						}
						return
					}
					if n != int64(*size) {
						bad.Add(1)
					}
					echoed.Add(1)
					<-sem
				}
			}()
			held := 0
			next := time.Now().Add(time.Duration(rand.Int63n(int64(gap) + 1)))
			for {
				if gap > 0 {
					if d := time.Until(next); d > 0 {
						time.Sleep(d)
					}
					next = next.Add(gap)
				}
				sem <- struct{}{}
				if time.Now().After(stopAt) || claimed.Add(1) > *messages {
					held = 1
					break
				}
				_ = c.SetWriteDeadline(stopAt.Add(15 * time.Second))
				if err := c.WriteMessage(websocket.BinaryMessage, payload); err != nil {
					errs.add(err)
					held = 1
					break
				}
				sent.Add(1)
			}
			// Drain: wait until every message in flight has come back.
			drainBy := time.After(15 * time.Second)
		drain:
			for ; held < *window; held++ {
				select {
				case sem <- struct{}{}:
				case <-readerDone:
					break drain
				case <-drainBy:
					break drain
				}
			}
			closing.Store(true)
			c.Close()
			<-readerDone
		}(c)
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
	res.finish(sent.Load(), echoed.Load(), bad.Load(), elapsed, *pid > 0, *messages, errs)
	emitJSON(res)
}

// finish fills in the counts and the figures derived from them (also used by
// h2-throughput, whose result embeds this one).
func (res *throughputResult) finish(sent, echoed, bad int64, elapsed time.Duration, cpuMeasured bool, messages int64, errs *errSampler) {
	res.Sent = sent
	res.Echoed = echoed
	res.Relayed = res.Sent + res.Echoed
	res.BadEchoes = bad
	res.Seconds = elapsed.Seconds()
	res.RelayedPerSec = float64(res.Relayed) / res.Seconds
	if res.Relayed > 0 && cpuMeasured {
		res.CPUSecPerMRel = res.ProxyCPUSec / (float64(res.Relayed) / 1e6)
	}
	if res.Sent >= messages {
		res.BoundedBy = "messages"
	} else {
		res.BoundedBy = "duration"
	}
	res.ErrorCount = errs.n.Load()
	res.Errors = errs.samples()
}
