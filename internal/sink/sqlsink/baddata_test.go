package sqlsink_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/changelog"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
)

var drivers = []string{"sqlite", "postgres"}

func rec(seq int64, key string, fields string) changelog.Record {
	r := changelog.Record{Seq: seq, TS: time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Millisecond),
		Op: changelog.OpUpsert, Key: key, Fields: json.RawMessage(fields)}
	if fields == "" {
		r.Op = changelog.OpDelete
	}
	return r
}

func applyRecs(t *testing.T, s sink.Sink, recs ...changelog.Record) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return s.Apply(ctx, sink.Batch{Pipeline: "p", Destination: "d", Epoch: 1, Records: recs})
}

// rejected checks that err rejects exactly the given seqs, each reason
// containing the matching fragment, and returns the reasons.
func rejected(t *testing.T, err error, want map[int64]string) {
	t.Helper()
	re, ok := sink.AsRecordErrors(err)
	if !ok {
		t.Fatalf("got %v, want RecordErrors for seqs %v", err, want)
	}
	if len(re.Failed) != len(want) {
		t.Fatalf("rejected %+v, want seqs %v", re.Failed, want)
	}
	for _, f := range re.Failed {
		frag, ok := want[f.Seq]
		if !ok || !strings.Contains(f.Reason, frag) {
			t.Errorf("seq %d rejected with %q; want a reason containing %q", f.Seq, f.Reason, frag)
		}
	}
}

func rowByID(t *testing.T, d *dest, id string) map[string]any {
	t.Helper()
	for _, r := range d.rows(t, d.table) {
		if r["id"] == id {
			return r
		}
	}
	return nil
}

func TestBadData(t *testing.T) {
	t.Parallel()
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()

			t.Run("HostileFieldNames", func(t *testing.T) {
				t.Parallel()
				d := newDest(t, driver, "hard", `we"ird table; --`)
				s := d.NewSink(t)
				defer s.Close()
				names := []string{`"; DROP TABLE x; --`, `a"b`, `[x]`, `'quote'`, "with space", "My_x0020_Column",
					"Ünïcödé ✓", strings.Repeat("L", 70), strings.Repeat("L", 70) + "2", "select", "\\back"}
				fields := map[string]any{"id": "1"}
				for i, n := range names {
					fields[n] = fmt.Sprintf("v%d", i)
				}
				raw, _ := json.Marshal(fields)
				if err := applyRecs(t, s, rec(1, "1", string(raw))); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				row := rowByID(t, d, "1")
				if row == nil {
					t.Fatal("row missing")
				}
				// Names fit the dialect: PostgreSQL shortens past 63 bytes, the
				// two 70-letter names land in two different columns.
				seen := map[any]bool{}
				for i, n := range names {
					col := n
					if driver == "postgres" && len(n) > 63 {
						col = pgShort(n)
					}
					v := row[col]
					if v != fmt.Sprintf("v%d", i) {
						t.Errorf("field %q: column %q holds %v", n, col, v)
					}
					seen[col] = true
				}
				if len(seen) != len(names) {
					t.Errorf("%d fields landed in %d columns", len(names), len(seen))
				}
				// The table named x in the payload was never touched: make one
				// and apply again.
				if err := applyRecs(t, s, rec(2, "2", string(raw))); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if len(d.rows(t, d.table)) != 2 {
					t.Error("want 2 rows")
				}
			})

			t.Run("LargeValue", func(t *testing.T) {
				t.Parallel()
				d := newDest(t, driver, "hard", "items")
				s := d.NewSink(t)
				defer s.Close()
				big := strings.Repeat("0123456789abcdef", 2<<20/16) // 2 MB
				raw, _ := json.Marshal(map[string]any{"id": "1", "Body": big, "Title": "t"})
				if err := applyRecs(t, s, rec(1, "1", string(raw)), rec(2, "2", `{"Title":"small"}`)); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if got := rowByID(t, d, "1")["Body"]; got != big {
					t.Errorf("2 MB value came back as %d bytes", len(fmt.Sprint(got)))
				}
			})

			t.Run("TypeChanges", func(t *testing.T) {
				t.Parallel()
				d := newDest(t, driver, "hard", "items")
				s := d.NewSink(t)
				defer s.Close()
				if err := applyRecs(t, s, rec(1, "1", `{"Amount":12.5,"Title":"a","Done":true}`)); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				// Number → text and boolean → text cannot go in; anything can
				// go into a text column (as its JSON text).
				err := applyRecs(t, s,
					rec(2, "1", `{"Amount":"twelve","Title":"b"}`),
					rec(3, "2", `{"Amount":3,"Title":42,"Done":"yes"}`),
					rec(4, "3", `{"Amount":4,"Title":["x"],"Done":false}`),
					rec(5, "4", `{"Amount":null,"Title":true}`))
				rejected(t, err, map[int64]string{2: `"Amount"`, 3: `"Done"`})
				if got := rowByID(t, d, "1"); got["Amount"] != 12.5 || got["Title"] != "a" {
					t.Errorf("rejected record changed the row: %v", got)
				}
				if got := rowByID(t, d, "3"); got["Title"] != `["x"]` || got["Amount"] != 4.0 {
					t.Errorf("array into text column: %v", got)
				}
				if got := rowByID(t, d, "4"); got["Title"] != "true" || got["Amount"] != nil {
					t.Errorf("bool into text column: %v", got)
				}
				// Mixed types for a new field within one batch: text holds both.
				if err := applyRecs(t, s, rec(6, "5", `{"Mixed":1}`), rec(7, "6", `{"Mixed":"one"}`)); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if got := rowByID(t, d, "5")["Mixed"]; got != "1" {
					t.Errorf("mixed field: %#v", got)
				}
			})

			t.Run("BadKeysAndNames", func(t *testing.T) {
				t.Parallel()
				d := newDest(t, driver, "hard", "items")
				s := d.NewSink(t)
				defer s.Close()
				err := applyRecs(t, s,
					rec(1, "", `{"Title":"no key"}`),
					rec(2, "ok", `{"Title":"fine"}`),
					rec(3, "sys", `{"_sluice_seq":1}`),
					rec(4, "nul\x00key", `{"Title":"x"}`),
					rec(5, "badjson", `{"Title":`),
					rec(6, "", ""), // a delete with an empty key
				)
				rejected(t, err, map[int64]string{1: "empty key", 3: "_sluice_", 4: "NUL", 5: "fields", 6: "empty key"})
				if rowByID(t, d, "ok") == nil {
					t.Error("the good record was not applied")
				}
			})

			if driver != "postgres" {
				return
			}
			t.Run("DatabaseRejects", func(t *testing.T) {
				t.Parallel()
				d := newDest(t, driver, "hard", "items")
				s := d.NewSink(t)
				defer s.Close()
				// Too long for a btree index entry (incompressible), and a NUL
				// in text: PostgreSQL refuses both; the sink bisects the batch.
				long := randomText(10000)
				var recs []changelog.Record
				for i := range 100 {
					recs = append(recs, rec(int64(i+1), fmt.Sprintf("k%d", i), `{"Title":"t"}`))
				}
				recs[37] = rec(38, long, `{"Title":"t"}`)
				recs[80] = rec(81, "k80", `{"Title":"nul\u0000"}`)
				rejected(t, applyRecs(t, s, recs...), map[int64]string{38: "index row", 81: "SQLSTATE"})
				if n := len(d.rows(t, d.table)); n != 98 {
					t.Errorf("%d rows, want 98", n)
				}
			})
		})
	}
}

// pgShort is the documented shortening: a prefix, "_" and 8 hex digits of
// the name's SHA-256, 63 bytes in all.
func pgShort(name string) string {
	sum := sha256.Sum256([]byte(name))
	return name[:63-9] + "_" + hex.EncodeToString(sum[:4])
}

func randomText(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	r := rand.New(rand.NewPCG(7, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// TestConcurrentDDL: two sinks on one table see the same new fields at the
// same moment; both add the columns, neither fails.
func TestConcurrentDDL(t *testing.T) {
	t.Parallel()
	for _, driver := range drivers {
		t.Run(driver, func(t *testing.T) {
			t.Parallel()
			d := newDest(t, driver, "hard", "items")
			cfg := d.config()
			var sinks [2]*sqlsink.Sink
			for i := range sinks {
				var err error
				c := cfg
				c.Destination = fmt.Sprintf("d%d", i)
				if sinks[i], err = sqlsink.Open(context.Background(), c); err != nil {
					t.Fatal(err)
				}
				defer sinks[i].Close()
			}
			for round := range 5 {
				var wg sync.WaitGroup
				errs := make([]error, 2)
				start := make(chan struct{})
				for i, s := range sinks {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						f := fmt.Sprintf(`{"New%d":%d,"Also%d":"x","Own%d_%d":true}`, round, i, round, i, round)
						errs[i] = applyRecs(t, s, rec(int64(round*10+i+1), fmt.Sprintf("k%d", i), f))
					}()
				}
				close(start)
				wg.Wait()
				for i, err := range errs {
					if err != nil {
						t.Errorf("round %d sink %d: %v", round, i, err)
					}
				}
			}
			row := rowByID(t, d, "k1")
			if row["New4"] != 1.0 || row["Also4"] != "x" || row["Own1_4"] != true {
				t.Errorf("row k1 = %v", row)
			}
		})
	}
}
