package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/internal/azstore"
	"github.com/sluicehq/sluice/internal/changelog"
)

// benchPipeline is the pipeline whose log the drains read.
const benchPipeline = "bench"

// The generated change stream: record seq touches key (seq*7919) mod keys
// (7919 is prime, so consecutive records touch distinct keys), every 50th
// record is a delete (2%), and the others upsert a list item whose fields are
// a function of seq alone — so any baseline can regenerate a key's final row
// from the seq the fold remembers.
const (
	keyStride   = 7919
	deleteEvery = 50
)

// genKey is the key record seq touches.
func genKey(seq int64, keys int) string { return strconv.FormatInt(seq*keyStride%int64(keys), 10) }

// genDelete reports whether record seq is a delete.
func genDelete(seq int64) bool { return seq%deleteEvery == 0 }

var statuses = [...]string{"New", "Approved", "Shipped", "Closed"}

// genRow is the field values of the item written by record seq, in
// genColumns order (Tags is JSON text).
type genRow struct {
	Title, Status string
	Amount        float64
	Customer      string
	OrderDate     string
	Region        string
	N             int64
	Tags          string
}

// genColumns are the destination columns of the generated fields, with their
// PostgreSQL types as sqlsink creates them.
var genColumns = [...]struct{ name, pgType string }{
	{"Title", "text"}, {"Status", "text"}, {"Amount", "double precision"}, {"Customer", "text"},
	{"OrderDate", "text"}, {"Region", "text"}, {"N", "double precision"}, {"Tags", "jsonb"},
}

func genFields(seq int64) genRow {
	return genRow{
		Title:     "PO-" + strconv.FormatInt(seq, 10),
		Status:    statuses[seq%int64(len(statuses))],
		Amount:    float64(seq%100_000) / 4,
		Customer:  "Contoso Ltd",
		OrderDate: "2026-11-25T08:00:00Z",
		Region:    "EMEA",
		N:         seq,
		Tags:      `["a","b"]`,
	}
}

// appendFieldsJSON appends the fields object of record seq, as Graph would
// send it (about 190 bytes).
func appendFieldsJSON(b []byte, seq int64) []byte {
	r := genFields(seq)
	b = append(b, `{"Title":`...)
	b = strconv.AppendQuote(b, r.Title)
	b = append(b, `,"Status":`...)
	b = strconv.AppendQuote(b, r.Status)
	b = append(b, `,"Amount":`...)
	b = strconv.AppendFloat(b, r.Amount, 'f', -1, 64)
	b = append(b, `,"Customer":`...)
	b = strconv.AppendQuote(b, r.Customer)
	b = append(b, `,"OrderDate":`...)
	b = strconv.AppendQuote(b, r.OrderDate)
	b = append(b, `,"Region":`...)
	b = strconv.AppendQuote(b, r.Region)
	b = append(b, `,"N":`...)
	b = strconv.AppendInt(b, r.N, 10)
	b = append(b, `,"Tags":`...)
	b = append(b, r.Tags...)
	return append(b, '}')
}

// genLog is the generated change log in Azurite and its fold by key.
type genLog struct {
	store *azstore.Store
	keys  int
	head  int64
	// fold maps each live key to the seq of its last upsert: what a
	// destination table must hold after draining the log to head.
	fold map[string]int64
}

// buildLog makes the bench pipeline's log hold n records, appending to it
// when it already holds fewer.
func (b *bench) buildLog(ctx context.Context, n int64) error {
	if b.log == nil {
		b.log = &genLog{store: b.store, keys: max(b.opts.records/5, 1), fold: map[string]int64{}}
	}
	g := b.log
	if g.head >= n {
		return nil
	}
	b.progressf("building the change log in Azurite: records %d..%d over %d keys", g.head+1, n, g.keys)
	lg := changelog.New(g.store, benchPipeline, changelog.Options{})
	st, err := lg.LoadState(ctx)
	if err != nil {
		return err
	}
	a, err := lg.NewAppender(ctx, st)
	if err != nil {
		return err
	}
	start, last := time.Now(), time.Now()
	from := g.head + 1
	var buf []byte
	for seq := from; seq <= n; seq++ {
		key := genKey(seq, g.keys)
		rec := changelog.Record{Op: changelog.OpUpsert, Key: key,
			Source: changelog.Source{Site: "contoso.sharepoint.com:/sites/ops", List: "Orders"}}
		if genDelete(seq) {
			rec.Op = changelog.OpDelete
			delete(g.fold, key)
		} else {
			buf = appendFieldsJSON(buf[:0], seq)
			rec.Fields = json.RawMessage(buf)
			g.fold[key] = seq
		}
		if err := a.Add(ctx, &rec); err != nil {
			return err
		}
		if rec.Seq != seq {
			return fmt.Errorf("log of pipeline %s: appended seq %d, expected %d (not a fresh log?)", benchPipeline, rec.Seq, seq)
		}
		if seq%100_000 == 0 {
			if err := a.Commit(ctx, nil); err != nil {
				return err
			}
			if time.Since(last) >= 5*time.Second {
				last = time.Now()
				b.progressf("  %d/%d records (%s/s)", seq, n, human(rate(seq-from+1, time.Since(start).Seconds())))
			}
		}
	}
	if err := a.Commit(ctx, nil); err != nil {
		return err
	}
	g.head = n
	b.progressf("  log head %d (%d live keys), %s records/s", n, len(g.fold), human(rate(n-from+1, time.Since(start).Seconds())))
	return nil
}
