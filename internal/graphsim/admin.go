package graphsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// AdminHandler returns the control endpoints other processes (the demo
// check, the chaos suite) use on a running simulator. They are no part of
// Graph, so they live apart from ServeHTTP; mount them under /_sim/.
// Lists are chosen with ?site=...&list=... (site: a composite id or
// "hostname:/path"; list: an id or display name); both may be omitted when
// the simulator has exactly one list.
//
//	GET  /_sim/lists                  every list: site, ids, live items, seq
//	GET  /_sim/snapshot               {"count":N,"items":{"<id>":{fields}}}: List.Snapshot
//	GET  /_sim/deletions              {"count":N,"deletions":[{"id":5,"change":9,"at":"..."}]}: List.Deletions
//	GET  /_sim/stats                  Stats
//	POST /_sim/stats/reset            zero Stats
//	GET  /_sim/knobs  POST /_sim/knobs   a list's Knobs (POST replaces them), e.g.
//	                                  {"shortPages":true,"pageDelay":"300ms","pageJitter":"1.2s"}
//	POST /_sim/faults                 queue a Fault (JSON body)
//	DELETE /_sim/faults               drop queued faults
//	POST /_sim/expire                 List.ExpireTokens (Sim.ExpireTokens without ?list)
//	POST /_sim/churn                  {"adds":1,"edits":2,"deletes":1,"seed":7}
//	POST /_sim/items                  {"id":5,"fields":{...}} Upsert, or {"fields":{...}} Add
//	POST /_sim/delete                 {"id":5,"unreported":false}
//	POST /_sim/deny                   {"site":"host:/sites/x","deny":true}
//	POST /_sim/token                  {"token":"new"}
//	POST /_sim/clock                  {"advance":"48h"}; needs a Clock with Advance
func (s *Sim) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_sim/lists", func(w http.ResponseWriter, r *http.Request) {
		type info struct {
			Site, SiteID, List, ListID string
			Items                      int
			Seq                        uint64
		}
		var out []info
		for _, l := range s.Lists() {
			out = append(out, info{l.site.hostname + ":" + l.site.path, l.SiteID(), l.Name(), l.ID(), l.Len(), l.Seq()})
		}
		adminJSON(w, out)
	})
	mux.HandleFunc("GET /_sim/snapshot", func(w http.ResponseWriter, r *http.Request) {
		l, ok := s.adminList(w, r)
		if !ok {
			return
		}
		l.writeSnapshot(w)
	})
	mux.HandleFunc("GET /_sim/deletions", func(w http.ResponseWriter, r *http.Request) {
		if l, ok := s.adminList(w, r); ok {
			d := l.Deletions()
			adminJSON(w, map[string]any{"count": len(d), "deletions": d})
		}
	})
	mux.HandleFunc("GET /_sim/stats", func(w http.ResponseWriter, r *http.Request) { adminJSON(w, s.Stats()) })
	mux.HandleFunc("POST /_sim/stats/reset", func(w http.ResponseWriter, r *http.Request) { s.ResetStats(); adminJSON(w, "ok") })
	mux.HandleFunc("GET /_sim/knobs", func(w http.ResponseWriter, r *http.Request) {
		if l, ok := s.adminList(w, r); ok {
			adminJSON(w, l.Knobs())
		}
	})
	mux.HandleFunc("POST /_sim/knobs", func(w http.ResponseWriter, r *http.Request) {
		var k Knobs
		if l, ok := s.adminList(w, r); ok && decodeBody(w, r, &k) {
			l.SetKnobs(k)
			adminJSON(w, k)
		}
	})
	mux.HandleFunc("POST /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if decodeBody(w, r, &f) {
			s.Inject(f)
			adminJSON(w, f)
		}
	})
	mux.HandleFunc("DELETE /_sim/faults", func(w http.ResponseWriter, r *http.Request) { s.ClearFaults(); adminJSON(w, "ok") })
	mux.HandleFunc("POST /_sim/expire", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("list") == "" {
			s.ExpireTokens()
		} else if l, ok := s.adminList(w, r); ok {
			l.ExpireTokens()
		} else {
			return
		}
		adminJSON(w, "ok")
	})
	mux.HandleFunc("POST /_sim/churn", func(w http.ResponseWriter, r *http.Request) {
		var c struct {
			Mutations
			Seed uint64 `json:"seed"`
		}
		if l, ok := s.adminList(w, r); ok && decodeBody(w, r, &c) {
			l.Churn(newRand(c.Seed^uint64(time.Now().UnixNano())), c.Adds, c.Edits, c.Deletes)
			adminJSON(w, map[string]any{"items": l.Len(), "seq": l.Seq()})
		}
	})
	mux.HandleFunc("POST /_sim/items", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ID     int            `json:"id"`
			Fields map[string]any `json:"fields"`
		}
		if l, ok := s.adminList(w, r); ok && decodeBody(w, r, &body) {
			if body.ID > 0 {
				l.Upsert(body.ID, body.Fields)
			} else {
				body.ID = l.Add(body.Fields)
			}
			adminJSON(w, map[string]any{"id": body.ID})
		}
	})
	mux.HandleFunc("POST /_sim/delete", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			ID         int  `json:"id"`
			Unreported bool `json:"unreported"`
		}
		if l, ok := s.adminList(w, r); ok && decodeBody(w, r, &body) {
			var found bool
			if body.Unreported {
				found = l.DeleteUnreported(body.ID)
			} else {
				found = l.Delete(body.ID)
			}
			adminJSON(w, map[string]any{"deleted": found})
		}
	})
	mux.HandleFunc("POST /_sim/deny", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Site string `json:"site"`
			Deny bool   `json:"deny"`
		}
		if decodeBody(w, r, &body) {
			if err := s.DenySite(body.Site, body.Deny); err != nil {
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			}
			adminJSON(w, body)
		}
	})
	mux.HandleFunc("POST /_sim/token", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Token string `json:"token"`
		}
		if decodeBody(w, r, &body) {
			s.SetToken(body.Token)
			adminJSON(w, "ok")
		}
	})
	mux.HandleFunc("POST /_sim/clock", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Advance string `json:"advance"`
		}
		if !decodeBody(w, r, &body) {
			return
		}
		d, err := time.ParseDuration(body.Advance)
		adv, ok := s.opts.Clock.(interface{ Advance(time.Duration) })
		if err != nil || !ok {
			http.Error(w, "clock: need {\"advance\": \"<duration>\"} and a ManualClock", http.StatusBadRequest)
			return
		}
		adv.Advance(d)
		adminJSON(w, map[string]any{"now": s.now().UTC().Format(time.RFC3339Nano)})
	})
	return mux
}

func (s *Sim) adminList(w http.ResponseWriter, r *http.Request) (*List, bool) {
	q := r.URL.Query()
	siteRef, name := q.Get("site"), q.Get("list")
	all := s.Lists()
	var match []*List
	for _, l := range all {
		if name != "" && !(strings.EqualFold(l.name, name) || strings.EqualFold(l.id, name)) {
			continue
		}
		if siteRef != "" {
			if got, ok := s.FindList(siteRef, l.id); !ok || got != l {
				continue
			}
		}
		match = append(match, l)
	}
	if len(match) != 1 {
		http.Error(w, fmt.Sprintf("graphsim admin: site=%q list=%q matches %d lists; name one", siteRef, name, len(match)), http.StatusNotFound)
		return nil, false
	}
	return match[0], true
}

// writeSnapshot streams the Snapshot of the list as JSON, one item at a time,
// so that a million-item list does not need a million maps.
func (l *List) writeSnapshot(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	l.mu.RLock()
	defer l.mu.RUnlock()
	b := append([]byte(`{"count":`), strconv.Itoa(l.live)...)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, l.seq, 10)
	b = append(b, `,"items":{`...)
	first := true
	for id := 1; id < len(l.items); id++ {
		if l.items[id].state != stateLive {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = strconv.AppendInt(b, int64(id), 10)
		b = append(b, `":`...)
		b = l.appendFieldsLocked(b, id, false, nil, false)
		if len(b) > 256<<10 {
			w.Write(b)
			b = b[:0]
		}
	}
	b = append(b, "}}\n"...)
	w.Write(b)
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		http.Error(w, "graphsim admin: bad JSON body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func adminJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
