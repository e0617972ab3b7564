// Command loadgen is the client and backend of the wsgate benchmark
// (bench/run.sh). Every load loop is bounded in count and time.
//
//	loadgen echo-server --listen 127.0.0.1:9001
//	loadgen idle        --target ws://127.0.0.1:8080/ --n 8000 --sources 127.0.0.2-9 [--proxy-pid PID]
//	loadgen throughput  --target URL --conns 100 --messages 500000 --duration 20s [--proxy-pid PID]
//	loadgen latency     --target URL --conns 4 --count 20000 --interval 1ms
//	loadgen handshakes  --target URL --workers 16 --duration 10s [--proxy-pid PID] [--ca cert.pem --resume --groups x25519,p256 with wss://]
//	loadgen storm       --target ws://127.0.0.1:8080/ --tls-target wss://127.0.0.1:8443/ --ca cert.pem --n 8000 --tls-n 4000 [--proxy-pid PID]
//	loadgen h2-idle       --target 127.0.0.1:8080 --conns 40 --streams 100 [--proxy-pid PID]
//	loadgen h2-throughput --target 127.0.0.1:8080 --conns 1 --streams 100 --window 8 [--proxy-pid PID]
//	loadgen h2-handshakes --target 127.0.0.1:8080 --workers 16 --duration 10s [--proxy-pid PID]
//	loadgen wait        --target URL --timeout 20s
//	loadgen routes      --wsgate BIN --backend HOST:PORT --n 5000 --dir DIR
//	loadgen procstat    PID
//
// Results are printed as one JSON object on stdout; progress goes to stderr.
package main

import (
	"fmt"
	"os"
	"strconv"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen echo-server|idle|throughput|latency|handshakes|storm|h2-idle|h2-throughput|h2-handshakes|wait|routes|procstat [flags]")
	os.Exit(2)
}

func main() {
	raiseNofile()
	if len(os.Args) < 2 {
		usage()
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "echo-server":
		cmdEchoServer(args)
	case "idle":
		cmdIdle(args)
	case "throughput":
		cmdThroughput(args)
	case "latency":
		cmdLatency(args)
	case "handshakes":
		cmdHandshakes(args)
	case "storm":
		cmdStorm(args)
	case "h2-idle":
		cmdH2Idle(args)
	case "h2-throughput":
		cmdH2Throughput(args)
	case "h2-handshakes":
		cmdH2Handshakes(args)
	case "wait":
		cmdWait(args)
	case "routes":
		cmdRoutes(args)
	case "procstat":
		if len(args) != 1 {
			usage()
		}
		pid, err := strconv.Atoi(args[0])
		if err != nil {
			usage()
		}
		ps, err := readProcTree(pid)
		if err != nil {
			fatalf("%v", err)
		}
		emitJSON(ps)
	default:
		usage()
	}
}
