package main

import (
	"flag"
	"io"
	"math/rand"
	"sort"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

type latStats struct {
	Target  string  `json:"target"`
	Samples int     `json:"samples"`
	P50US   float64 `json:"p50_us"`
	P90US   float64 `json:"p90_us"`
	P99US   float64 `json:"p99_us"`
	P999US  float64 `json:"p999_us"`
	MaxUS   float64 `json:"max_us"`
	MeanUS  float64 `json:"mean_us"`
}

type latencyResult struct {
	latStats
	Conns        int       `json:"conns"`
	Size         int       `json:"size"`
	IntervalUS   float64   `json:"interval_us"`
	Baseline     *latStats `json:"baseline,omitempty"`
	MachineCores float64   `json:"machine_busy_cores"`
	ErrorCount   int64     `json:"error_count"`
	Errors       []string  `json:"errors,omitempty"`
}

func summarize(target string, all []time.Duration) latStats {
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	s := latStats{Target: target, Samples: len(all)}
	if len(all) == 0 {
		return s
	}
	var sum time.Duration
	for _, d := range all {
		sum += d
	}
	s.MeanUS = float64(sum) / float64(len(all)) / 1e3
	s.P50US = percentile(all, 0.50)
	s.P90US = percentile(all, 0.90)
	s.P99US = percentile(all, 0.99)
	s.P999US = percentile(all, 0.999)
	s.MaxUS = float64(all[len(all)-1]) / 1e3
	return s
}

// roundTrip sends payload and reads the echo into buf (no allocation per message).
func roundTrip(c *websocket.Conn, payload, buf []byte) (time.Duration, error) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	t0 := time.Now()
	if err := c.WriteMessage(websocket.BinaryMessage, payload); err != nil {
		return 0, err
	}
	_, r, err := c.NextReader()
	if err != nil {
		return 0, err
	}
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	if _, err := io.Copy(io.Discard, r); err != nil {
		return 0, err
	}
	return d, nil
}

// cmdLatency measures request/response round trips: each of --conns workers
// sends one message every --interval on its tunnel and waits for the echo
// (paced closed loop, so the machine is not saturated). With --baseline, each
// worker also holds a tunnel straight to the backend and alternates round trips
// between the two, so both distributions see the same machine noise. The first
// --warmup round trips of each tunnel are discarded.
func cmdLatency(args []string) {
	fs := flag.NewFlagSet("latency", flag.ExitOnError)
	target := fs.String("target", "", "ws:// URL")
	baseline := fs.String("baseline", "", "optional ws:// URL of the backend itself, measured interleaved")
	conns := fs.Int("conns", 4, "tunnels (per target)")
	count := fs.Int("count", 20000, "measured round trips per target in total")
	warmup := fs.Int("warmup", 200, "discarded round trips per tunnel")
	interval := fs.Duration("interval", time.Millisecond, "pause between round trips of one worker")
	size := fs.Int("size", 1024, "message payload bytes")
	duration := fs.Duration("duration", 60*time.Second, "time bound")
	sourcesS := fs.String("sources", "127.0.0.2-9", "client source addresses")
	_ = fs.Parse(args)
	if *target == "" {
		fatalf("latency: --target required")
	}
	srcs, err := parseSources(*sourcesS)
	if err != nil {
		fatalf("%v", err)
	}
	dialer := newDialer(srcs, 4096)
	errs := newErrSampler()
	payload := make([]byte, *size)
	rand.New(rand.NewSource(2)).Read(payload)
	perConn := (*count + *conns - 1) / *conns
	deadline := time.Now().Add(*duration)
	busy0, t0 := machineBusy(), time.Now()

	var mu sync.Mutex
	var all, base []time.Duration
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, _, err := dialer.Dial(*target, nil)
			if err != nil {
				errs.add(err)
				return
			}
			defer c.Close()
			var b *websocket.Conn
			if *baseline != "" {
				b, _, err = dialer.Dial(*baseline, nil)
				if err != nil {
					errs.add(err)
					return
				}
				defer b.Close()
			}
			buf := make([]byte, *size)
			local := make([]time.Duration, 0, perConn)
			localB := make([]time.Duration, 0, perConn)
			for j := 0; j < perConn+*warmup && time.Now().Before(deadline); j++ {
				time.Sleep(*interval)
				order := []*websocket.Conn{c, b}
				if (i+j)%2 == 1 {
					order = []*websocket.Conn{b, c}
				}
				for _, cc := range order {
					if cc == nil {
						continue
					}
					d, err := roundTrip(cc, payload, buf)
					if err != nil {
						errs.add(err)
						return
					}
					if j < *warmup {
						continue
					}
					if cc == c {
						local = append(local, d)
					} else {
						localB = append(localB, d)
					}
				}
			}
			_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
			if b != nil {
				_ = b.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(1000, ""), time.Now().Add(time.Second))
			}
			mu.Lock()
			all = append(all, local...)
			base = append(base, localB...)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	res := latencyResult{latStats: summarize(*target, all), Conns: *conns, Size: *size, IntervalUS: float64(*interval) / 1e3}
	if *baseline != "" {
		s := summarize(*baseline, base)
		res.Baseline = &s
	}
	res.MachineCores = (machineBusy() - busy0) / time.Since(t0).Seconds()
	res.ErrorCount = errs.n.Load()
	res.Errors = errs.samples()
	emitJSON(res)
}
