module wsgate.io/bench/loadgen

go 1.23.0

require github.com/gorilla/websocket v1.5.3

require (
	golang.org/x/net v0.38.0
	golang.org/x/text v0.23.0 // indirect
)
