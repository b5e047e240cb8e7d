package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Results is bench/results/latest.json.
type Results struct {
	Machine   string     `json:"machine"`
	Workloads []Workload `json:"workloads"`
}

// Workload is one measured figure next to its baseline. RecordsPerSec and
// BaselinePerSec are rates (records, rows, events, items — or, for
// handler-start, starts per second), and Ratio is always sluice's rate over
// the baseline's, so 1.0 means "as fast as the baseline".
type Workload struct {
	Name           string  `json:"name"`
	Records        int64   `json:"records"`
	RecordsPerSec  float64 `json:"records_per_sec"`
	Baseline       string  `json:"baseline"`
	BaselinePerSec float64 `json:"baseline_per_sec"`
	Ratio          float64 `json:"ratio"`
	PeakRSSBytes   int64   `json:"peak_rss_bytes"`

	Seconds         float64  `json:"seconds,omitempty"`          // the measured part
	BaselineRecords int64    `json:"baseline_records,omitempty"` // what the baseline moved
	Floor           string   `json:"floor,omitempty"`
	FloorPerSec     float64  `json:"floor_per_sec,omitempty"`
	RatioToFloor    float64  `json:"ratio_to_floor,omitempty"`
	Check           string   `json:"check,omitempty"`
	CheckOK         *bool    `json:"check_ok,omitempty"`
	RequestsPer1000 float64  `json:"graph_requests_per_1000_items,omitempty"`
	RUPer1000       float64  `json:"ru_per_1000_items,omitempty"`
	MedianMS        float64  `json:"median_ms,omitempty"`
	BaselineMS      float64  `json:"baseline_median_ms,omitempty"`
	RSSGrowth       *float64 `json:"rss_growth_vs_drain_postgres,omitempty"`
	Target          string   `json:"target,omitempty"`
	TargetMet       *bool    `json:"target_met,omitempty"`
	WallSeconds     float64  `json:"wall_seconds,omitempty"`    // the workload with its set-up and baselines
	LoadAverage     string   `json:"load_average_1m,omitempty"` // when the workload started
	PeakDetail      string   `json:"peak_rss_detail,omitempty"` // the child's own view of its peak
	Note            string   `json:"note,omitempty"`
	Error           string   `json:"error,omitempty"`
}

// report prints the table to w and writes the results file.
func (b *bench) report(w io.Writer) error {
	res := Results{Machine: machine(), Workloads: b.results}
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	path := b.opts.out
	if !filepath.IsAbs(path) {
		path = filepath.Join(b.root, path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	printTable(w, res)
	fmt.Fprintf(w, "\nwrote %s\n", path)
	for _, wl := range res.Workloads {
		if wl.Error != "" {
			return fmt.Errorf("%s failed: %s", wl.Name, wl.Error)
		}
	}
	return nil
}

// printTable writes the human-readable table.
func printTable(w io.Writer, res Results) {
	fmt.Fprintf(w, "\nsluice-bench — %s\n\n", res.Machine)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "workload\trecords\tsluice/s\tbaseline\tbaseline/s\tratio\tpeak RSS\ttarget\t")
	for _, wl := range res.Workloads {
		rate, base := human(wl.RecordsPerSec), human(wl.BaselinePerSec)
		if wl.Name == wHandlerStart {
			rate, base = fmt.Sprintf("%.1f ms", wl.MedianMS), fmt.Sprintf("%.1f ms", wl.BaselineMS)
		}
		target := "-"
		if wl.TargetMet != nil {
			target = map[bool]string{true: "met", false: "MISSED"}[*wl.TargetMet]
		}
		if wl.Error != "" {
			target = "ERROR"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.3f\t%s\t%s\t\n", wl.Name, wl.Records, rate, wl.Baseline, base, wl.Ratio, mib(wl.PeakRSSBytes), target)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, wl := range res.Workloads {
		var notes []string
		if wl.Floor != "" {
			notes = append(notes, fmt.Sprintf("floor %s %s/s (sluice = %.1fx the floor)", wl.Floor, human(wl.FloorPerSec), wl.RatioToFloor))
		}
		if wl.Check != "" {
			notes = append(notes, "check: "+wl.Check)
		}
		if wl.RUPer1000 > 0 {
			notes = append(notes, fmt.Sprintf("%.1f Graph requests and %.1f RU per 1,000 items", wl.RequestsPer1000, wl.RUPer1000))
		}
		if wl.RSSGrowth != nil {
			notes = append(notes, fmt.Sprintf("peak RSS growth vs drain-postgres %+.1f%%", *wl.RSSGrowth*100))
		}
		if wl.Target != "" {
			notes = append(notes, "target: "+wl.Target)
		}
		if wl.Note != "" {
			notes = append(notes, wl.Note)
		}
		if wl.Error != "" {
			notes = append(notes, "ERROR: "+wl.Error)
		}
		for i, n := range notes {
			name := ""
			if i == 0 {
				name = wl.Name
			}
			fmt.Fprintf(w, "  %-18s %s\n", name, n)
		}
	}
}

// machine describes this machine: CPU model, cores, memory, Go, OS, date.
func machine() string {
	cpu := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	mem := "unknown memory"
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range bytes.SplitSeq(data, []byte("\n")) {
			if v, ok := bytes.CutPrefix(line, []byte("MemTotal:")); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(string(v)), "kB")), 10, 64)
				mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s, %s %s/%s, %s", cpu, runtime.NumCPU(), mem,
		runtime.Version(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format("2006-01-02 15:04 MST"))
}

// human formats a rate: 123, 12.3k, 1.23M.
func human(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.2fk", v/1e3)
	}
	return fmt.Sprintf("%.1f", v)
}

func mib(n int64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// round rounds v to d decimals (for the JSON file's readability).
func round(v float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}

// rate is n per second over secs, rounded.
func rate(n int64, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return round(float64(n)/secs, 0)
}

// ratio is a/b rounded to 3 decimals, 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return round(a/b, 3)
}
