// promqlcheck parses every query of the chart's dashboards and PrometheusRules
// (a JSON array of {"source", "expr"} on stdin, as `chartcheck.py queries`
// prints it) with Prometheus' own PromQL parser, so a syntax or type error in an
// alert or panel fails the tests instead of a Prometheus rule load. Grafana
// variables are replaced by plain values first; alert expressions must be
// instant vectors. Exit status: 0 all valid, 1 some invalid, 2 bad input.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/prometheus/prometheus/promql/parser"
)

type query struct {
	Source string `json:"source"`
	Expr   string `json:"expr"`
}

func main() {
	var qs []query
	if err := json.NewDecoder(os.Stdin).Decode(&qs); err != nil {
		fmt.Fprintln(os.Stderr, "promqlcheck:", err)
		os.Exit(2)
	}
	grafana := strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
		"${job}", "x", "${namespace}", "x", "${route}", "x", "$job", "x", "$namespace", "x", "$route", "x")
	p := parser.NewParser(parser.Options{})
	bad, n := 0, 0
	for _, q := range qs {
		e := grafana.Replace(q.Expr)
		if strings.HasPrefix(strings.TrimSpace(e), "label_values(") {
			// A Grafana templating function, not PromQL: check its selector.
			inner := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(e), "label_values("), ")")
			if i := strings.LastIndex(inner, ","); i >= 0 {
				inner = inner[:i]
			}
			e = inner
		}
		n++
		expr, err := p.ParseExpr(e)
		if err == nil && strings.HasPrefix(q.Source, "PrometheusRule") && expr.Type() != parser.ValueTypeVector {
			err = fmt.Errorf("an alert expression must be an instant vector, not %s", expr.Type())
		}
		if err != nil {
			bad++
			fmt.Printf("  FAIL %s: %v\n    %s\n", q.Source, err, strings.ReplaceAll(e, "\n", "\n    "))
		}
	}
	fmt.Printf("  %d PromQL expressions parsed by github.com/prometheus/prometheus/promql/parser, %d invalid\n", n, bad)
	if bad > 0 {
		os.Exit(1)
	}
}
