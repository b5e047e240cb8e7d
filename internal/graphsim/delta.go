package graphsim

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Knobs switch on a list's adversarial behaviours (reference §7.5). The
// zero value is a well-behaved Graph. Every decision is a deterministic
// function of the round, so a retried nextLink returns the same page.
type Knobs struct {
	// DuplicateRate is the fraction (0..1) of a round's items delivered
	// twice: first at their previous version (a deleted item: its last live
	// version), then at the end of the round at the latest one (§1.1: "the
	// same item might appear more than once ... use the last occurrence").
	DuplicateRate float64 `json:"duplicateRate,omitempty"`
	// Shuffle delivers a round's items in a pseudo-random order instead of
	// id order (full rounds) or change order (incremental rounds) (§1.3).
	Shuffle bool `json:"shuffle,omitempty"`
	// EmptyPageEvery, when n ≥ 2, makes every n-th page of a round empty,
	// with a nextLink (§7.4).
	EmptyPageEvery int `json:"emptyPageEvery,omitempty"`
	// EmptyFinalPage puts the deltaLink on a separate empty page after the
	// last items, instead of on the last page with items (§1.2).
	EmptyFinalPage bool `json:"emptyFinalPage,omitempty"`
	// ShortPages makes page sizes vary between 1 and $top (§1.1: "the number
	// of objects in each page can vary").
	ShortPages bool `json:"shortPages,omitempty"`
	// Replay, when n > 0, makes an incremental round also re-deliver the
	// last n changes already delivered before its token (§1.3 "replays").
	Replay int `json:"replay,omitempty"`
	// Tombstones selects how deletes are shaped; default DeletedFacet.
	Tombstones TombstoneStyle `json:"tombstones,omitempty"`
	// MutatePerPage applies these random changes right after each page is
	// served, so the list changes while clients are mid-round.
	MutatePerPage Mutations `json:"mutatePerPage,omitzero"`
	// Resync is the error code of 410 answers; zero means ResyncCodes[0].
	Resync Resync `json:"resync,omitzero"`
	// ResyncWithoutLocation leaves the Location header off 410 answers.
	ResyncWithoutLocation bool `json:"resyncWithoutLocation,omitempty"`
	// PageDelay and PageJitter give delta pages Graph's latency: real
	// Graph takes 0.5–2 s per page of list items (§1.1, §3), and a client
	// only meets its own timing bugs at that pace. Each delta request
	// (token=latest included) waits PageDelay plus a uniformly random
	// [0, PageJitter) before it is served: its token is judged, and its
	// page built, as they are when the answer goes out, so a token
	// expired meanwhile gets 410. A client that gives up ends the wait at
	// once. Injected faults and auth errors answer without delay. In JSON
	// both are Go duration strings, e.g. "300ms".
	PageDelay  time.Duration `json:"-"`
	PageJitter time.Duration `json:"-"`
}

// knobsJSON is Knobs with its durations as Go duration strings.
type knobsJSON struct {
	knobsFields
	PageDelay  string `json:"pageDelay,omitempty"`
	PageJitter string `json:"pageJitter,omitempty"`
}

type knobsFields Knobs // Knobs without its JSON methods

// MarshalJSON writes the knobs with durations as strings ("1.5s").
func (k Knobs) MarshalJSON() ([]byte, error) {
	j := knobsJSON{knobsFields: knobsFields(k)}
	if k.PageDelay != 0 {
		j.PageDelay = k.PageDelay.String()
	}
	if k.PageJitter != 0 {
		j.PageJitter = k.PageJitter.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes and refuses unknown keys, so
// that a misspelt knob in an admin request is an error, not a no-op.
func (k *Knobs) UnmarshalJSON(b []byte) error {
	var j knobsJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	out := Knobs(j.knobsFields)
	for _, d := range []struct {
		name, text string
		to         *time.Duration
	}{{"pageDelay", j.PageDelay, &out.PageDelay}, {"pageJitter", j.PageJitter, &out.PageJitter}} {
		if d.text == "" {
			continue
		}
		v, err := time.ParseDuration(d.text)
		if err != nil || v < 0 {
			return fmt.Errorf("knob %s: %q is not a non-negative duration such as \"300ms\"", d.name, d.text)
		}
		*d.to = v
	}
	*k = out
	return nil
}

// pageWait is how long a page waits under the knobs: PageDelay plus a
// uniformly random share of PageJitter.
func (k Knobs) pageWait() time.Duration {
	d := max(k.PageDelay, 0)
	if k.PageJitter > 0 {
		d += rand.N(k.PageJitter)
	}
	return d
}

// waitPage holds a delta request back for the knobs' latency. It reports
// false when the client went away first; nothing should be written then.
func waitPage(r *http.Request, k Knobs) bool {
	d := k.pageWait()
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// Mutations counts random changes (see List.Churn).
type Mutations struct {
	Adds    int `json:"adds,omitempty"`
	Edits   int `json:"edits,omitempty"`
	Deletes int `json:"deletes,omitempty"`
}

// TombstoneStyle is the JSON shape of a deleted item in a delta page.
type TombstoneStyle string

const (
	// DeletedFacet is what v1.0 list-item delta documents: {"id", "parentReference",
	// "contentType", "deleted": {"state": "deleted"}}, no fields (§1.1, §1.7 B).
	DeletedFacet TombstoneStyle = ""
	// RemovedAnnotation is the directory-object convention,
	// {"id", "@removed": {"reason": "deleted"}} (§1.3), which consumers
	// are advised to handle too.
	RemovedAnnotation TombstoneStyle = "removed"
	// BothShapes carries both the deleted facet and @removed.
	BothShapes TombstoneStyle = "both"
)

// token is the state carried by a deltaLink ("d") or nextLink ("p") token.
// Its text imitates SharePoint change tokens (§1.1, §7.2) and is base64
// encoded so clients treat it as opaque.
type token struct {
	page   bool
	listID string
	issued time.Time
	serial uint64 // issue order, for ExpireTokens
	snap   uint64 // change number the round (or deltaLink) covers up to
	// nextLink state:
	full   bool   // full enumeration (no token) vs changes since from
	from   uint64 // the incremental round's starting change number
	lo, hi uint64 // domain: item ids (full) or log indexes (incremental)
	phase  uint8  // 0: main walk; 1: the duplicates tail
	pos    uint64 // next position in the domain
	pageNo uint64 // pages served so far in this round
	// The round's order and duplicates are fixed when it starts, as a real
	// nextLink's are: knobs changed mid-round must not make a resumed
	// round skip or repeat items (the items before pos in the new order
	// would never be delivered).
	shuffle bool
	dupPPM  uint64 // DuplicateRate in parts per million
}

const ticksAtUnixEpoch = 621355968000000000

func (t token) encode() string {
	ticks := t.issued.UnixNano()/100 + ticksAtUnixEpoch
	parts := []string{"4", "%234", "%231", "3", t.listID, strconv.FormatInt(ticks, 10),
		strconv.FormatUint(t.snap, 10), strconv.FormatUint(t.serial, 10)}
	if !t.page {
		parts = append(parts, "%23", "%23", "%230", "%23")
	} else {
		parts[0] = "5"
		full := "0"
		if t.full {
			full = "1"
		}
		shuffle := "0"
		if t.shuffle {
			shuffle = "1"
		}
		parts = append(parts, full, strconv.FormatUint(t.from, 10), strconv.FormatUint(t.lo, 10),
			strconv.FormatUint(t.hi, 10), strconv.Itoa(int(t.phase)), strconv.FormatUint(t.pos, 10),
			strconv.FormatUint(t.pageNo, 10), shuffle, strconv.FormatUint(t.dupPPM, 10))
	}
	return base64.StdEncoding.EncodeToString([]byte(strings.Join(parts, ";")))
}

var errBadToken = errors.New("bad token")

func decodeToken(s string) (token, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return token{}, errBadToken
	}
	p := strings.Split(string(raw), ";")
	if len(p) < 8 || (p[0] != "4" && p[0] != "5") {
		return token{}, errBadToken
	}
	var t token
	nums := make([]uint64, 0, 10)
	idx := []int{5, 6, 7}
	if p[0] == "5" {
		if len(p) != 17 {
			return token{}, errBadToken
		}
		t.page = true
		idx = append(idx, 8, 9, 10, 11, 12, 13, 14, 15, 16)
	}
	for _, i := range idx {
		n, err := strconv.ParseUint(p[i], 10, 64)
		if err != nil {
			return token{}, errBadToken
		}
		nums = append(nums, n)
	}
	t.listID = p[4]
	t.issued = time.Unix(0, (int64(nums[0])-ticksAtUnixEpoch)*100)
	t.snap, t.serial = nums[1], nums[2]
	if t.page {
		t.full = nums[3] == 1
		t.from, t.lo, t.hi = nums[4], nums[5], nums[6]
		t.phase, t.pos, t.pageNo = uint8(nums[7]), nums[8], nums[9]
		t.shuffle, t.dupPPM = nums[10] == 1, nums[11]
	}
	return t, nil
}

// deltaQuery holds the query options of a delta request.
type deltaQuery struct {
	opts     []string // raw "name=value" options other than token, carried into links
	token    string
	hasToken bool
	expand   bool     // $expand=fields
	fieldSel fieldSel // $expand=fields($select=...)
	topSel   map[string]bool
	top      int
}

// listItemProps are the listItem properties $select may name.
var listItemProps = map[string]bool{
	"id": true, "eTag": true, "createdDateTime": true, "lastModifiedDateTime": true, "webUrl": true,
	"createdBy": true, "lastModifiedBy": true, "parentReference": true, "contentType": true,
	"fields": true, "sharepointIds": true, "name": true, "description": true, "deleted": true,
}

func (s *Sim) parseDeltaQuery(raw string) (deltaQuery, *routeError) {
	q := deltaQuery{top: s.opts.DefaultPageSize}
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		if err1 != nil || err2 != nil {
			return q, &routeError{http.StatusBadRequest, "BadRequest", "Invalid query string."}
		}
		switch key {
		case "token":
			q.token, q.hasToken = val, true
			continue
		case "$top":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 {
				return q, &routeError{http.StatusBadRequest, "BadRequest", "Invalid value '" + val + "' for $top query option found. The $top query option requires a non-negative integer value."}
			}
			q.top = min(max(n, 1), s.opts.MaxPageSize)
		case "$expand":
			if e := q.parseExpand(val); e != nil {
				return q, e
			}
		case "$select":
			q.topSel = map[string]bool{}
			for _, name := range strings.Split(val, ",") {
				name = strings.TrimSpace(name)
				if !listItemProps[name] {
					return q, &routeError{http.StatusBadRequest, "BadRequest", "Parsing OData Select and Expand failed: Could not find a property named '" + name + "' on type 'microsoft.graph.listItem'."}
				}
				q.topSel[name] = true
			}
		case "$filter", "$orderby", "$skip", "$search", "$count":
			// Delta does not support these (reference §1.1: drive delta rejects $filter).
			return q, &routeError{http.StatusBadRequest, "invalidRequest", "The query option '" + key + "' is not supported with delta."}
		}
		q.opts = append(q.opts, part)
	}
	return q, nil
}

// parseExpand accepts "fields", "fields($select=A,B)" and "fields(select=A,B)".
func (q *deltaQuery) parseExpand(val string) *routeError {
	for _, e := range splitTopLevel(val) {
		name, inner, _ := strings.Cut(strings.TrimSpace(e), "(")
		if name != "fields" {
			return &routeError{http.StatusBadRequest, "BadRequest", "Parsing OData Select and Expand failed: Could not find a property named '" + name + "' on type 'microsoft.graph.listItem'."}
		}
		q.expand = true
		inner = strings.TrimSuffix(inner, ")")
		if inner == "" {
			continue
		}
		k, v, ok := strings.Cut(inner, "=")
		if !ok || (k != "$select" && k != "select") {
			return &routeError{http.StatusBadRequest, "BadRequest", "Parsing OData Select and Expand failed: unsupported option in '" + e + "'."}
		}
		q.fieldSel = fieldSel{}
		for _, f := range strings.Split(v, ",") {
			if f = strings.TrimSpace(f); f != "" {
				q.fieldSel[f] = true
			}
		}
	}
	return nil
}

// splitTopLevel splits on commas outside parentheses.
func splitTopLevel(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// serveDelta serves GET .../lists/{list}/items/delta (reference §1.1).
func (s *Sim) serveDelta(w http.ResponseWriter, r *http.Request, rt route, l *List) {
	q, qerr := s.parseDeltaQuery(r.URL.RawQuery)
	if qerr != nil {
		s.writeError(w, r, qerr.status, qerr.code, qerr.msg, nil)
		return
	}
	// Graph's latency comes first: the token is judged, and the page shows
	// the list, as they are when the answer is made.
	if !waitPage(r, l.Knobs()) {
		s.log.Debug("client gone while its delta request was delayed", "url", r.URL.String())
		return
	}
	base := baseURL(r) + "/sites/" + l.site.id + "/lists/" + l.id + "/items/delta"
	now := s.now()

	l.mu.Lock()
	l.purgeLocked(now)
	knobs := l.knobs
	var cur token
	switch {
	case !q.hasToken:
		// A fresh enumeration of the current state (§1.1, §1.3).
		cur = token{page: true, full: true, snap: l.seq, lo: 1, hi: uint64(max(len(l.items), 1))}
		cur.shuffle, cur.dupPPM = knobs.roundShape()
	case q.token == "latest":
		// An empty page with a deltaLink for "now" (§1.7 B).
		seq := l.seq
		l.mu.Unlock()
		s.writePage(w, r, rt, l, nil, 0, base, q, token{snap: seq}, false)
		return
	default:
		t, err := decodeToken(q.token)
		if err != nil || !strings.EqualFold(t.listID, l.id) || t.snap > l.seq ||
			(t.page && (t.lo > t.hi || (t.full && t.hi > uint64(len(l.items))) || (!t.full && t.hi > uint64(len(l.log))))) {
			l.mu.Unlock()
			s.writeError(w, r, http.StatusBadRequest, "invalidRequest", "The provided delta token is not valid for this list.", nil)
			return
		}
		if l.goneLocked(t, now) {
			l.mu.Unlock()
			s.writeGone(w, r, base, q, knobs)
			return
		}
		cur = t
		if !t.page {
			// A deltaLink: the changes after its change number, up to now.
			from := t.snap
			lo := uint64(sort.Search(len(l.log), func(i int) bool { return l.log[i].change > from }))
			lo -= min(lo, uint64(max(knobs.Replay, 0)))
			cur = token{page: true, from: from, snap: l.seq, lo: lo, hi: uint64(len(l.log))}
			cur.shuffle, cur.dupPPM = knobs.roundShape()
		}
	}
	l.mu.Unlock()

	l.mu.RLock()
	bp := bufPool.Get().(*[]byte)
	items, n, next, done := l.buildPageLocked((*bp)[:0], cur, q, knobs)
	l.mu.RUnlock()

	if done {
		s.writePage(w, r, rt, l, items, n, base, q, token{snap: cur.snap}, false)
	} else {
		s.writePage(w, r, rt, l, items, n, base, q, next, true)
	}
	*bp = items[:0]
	bufPool.Put(bp)

	if m := knobs.MutatePerPage; m != (Mutations{}) {
		l.mu.Lock()
		l.churnLocked(l.rng, m.Adds, m.Edits, m.Deletes)
		l.mu.Unlock()
	}
}

// goneLocked reports whether a token must be refused with 410.
func (l *List) goneLocked(t token, now time.Time) bool {
	if t.serial <= l.expireSerial {
		return true
	}
	if lt := l.sim.opts.TokenLifetime; lt > 0 && now.Sub(t.issued) > lt {
		return true
	}
	// A purged tombstone newer than the token's starting point would be
	// missed: the token can no longer be answered (§1.1, change-log retention).
	from := t.snap
	if t.page {
		if t.full {
			return false
		}
		from = t.from
	}
	return from < l.purgedThrough
}

func (s *Sim) writeGone(w http.ResponseWriter, r *http.Request, base string, q deltaQuery, k Knobs) {
	s.count(func(st *Stats) { st.Gone++ })
	code := k.Resync
	if code.Code == "" {
		code = ResyncCodes[0]
	}
	if !k.ResyncWithoutLocation {
		// "a new nextLink that starts a fresh delta enumeration" (§1.1):
		// the original query options without a token.
		w.Header().Set("Location", joinLink(base, q.opts, ""))
	}
	msg := "Resync required. Replace any local items with the server's version (including deletes) if you're sure that the service was up to date with your local changes when you last sync'd. Upload any local changes that the server doesn't know about."
	if !strings.EqualFold(code.Code, "resyncRequired") && !strings.HasPrefix(code.Code, "resync") {
		msg = "The sync state is not valid or has expired."
	}
	s.writeError(w, r, http.StatusGone, code.Code, msg, &innerError{Code: code.InnerCode})
}

// roundShape is what a round fixes when it starts: its order and its rate
// of duplicates.
func (k Knobs) roundShape() (shuffle bool, dupPPM uint64) {
	return k.Shuffle, uint64(max(k.DuplicateRate, 0) * 1e6)
}

// buildPageLocked appends one page of items to b and returns the items, their
// count, the next page's cursor, and whether the round is complete.
//
// Latest-state semantics (§1.1): an incremental round walks the change-log
// entries between its token and the change number at the round's start
// (snap), delivering an item for its current entry only. An item changed
// while the round is in progress no longer has a current entry in that
// range, so it is skipped here and delivered by the next round, whose token
// starts at snap: nothing is lost. A full round walks item ids and delivers
// live items at their current state.
func (l *List) buildPageLocked(b []byte, c token, q deltaQuery, k Knobs) ([]byte, int, token, bool) {
	top := q.top
	if k.ShortPages {
		top = 1 + int(mix(l.salt^c.snap, c.pageNo)%uint64(top))
	}
	if k.EmptyPageEvery > 1 && c.pageNo%uint64(k.EmptyPageEvery) == uint64(k.EmptyPageEvery-1) {
		c.pageNo++
		return b, 0, c, false
	}
	dupKey := l.salt ^ c.snap
	dups := c.dupPPM > 0
	dupRate := float64(c.dupPPM) / 1e6
	isDup := func(id int) bool {
		return dups && float64(mix(dupKey, uint64(id))>>11)/(1<<53) < dupRate
	}
	n := c.hi - c.lo
	scanned, maxScan := 0, 8*top+1024
	count := 0
	for count < top && scanned < maxScan {
		if c.pos >= n {
			if c.phase == 0 && dups {
				c.phase, c.pos = 1, 0
				continue
			}
			break
		}
		p := c.pos
		if c.shuffle {
			p = permute(p, n, dupKey+uint64(c.phase))
		}
		c.pos++
		scanned++
		idx := c.lo + p
		var id int
		if c.full {
			id = int(idx)
			if id <= 0 || id >= len(l.items) || l.items[id].state != stateLive {
				continue
			}
		} else {
			e := l.log[idx]
			id = int(e.id)
			if it := &l.items[id]; it.state == stateEmpty || it.change != e.change {
				continue
			}
		}
		dup := isDup(id)
		if c.phase == 1 && !dup {
			continue
		}
		if count > 0 {
			b = append(b, ',')
		}
		b = l.appendItemLocked(b, id, q, k, c.phase == 0 && dup)
		count++
	}
	done := c.pos >= n && (c.phase == 1 || !dups)
	if done && count > 0 && k.EmptyFinalPage {
		done = false
	}
	c.pageNo++
	return b, count, c, done
}

// permute maps i to a pseudo-random position in [0, n), bijectively: a
// four-round Feistel network over the next even power of two, with cycle
// walking back into range.
func permute(i, n, key uint64) uint64 {
	if n <= 2 {
		return i
	}
	b := uint(bits.Len64(n - 1))
	b += b & 1
	half := b / 2
	mask := uint64(1)<<half - 1
	x := i
	for {
		left, right := x>>half, x&mask
		for round := uint64(0); round < 4; round++ {
			left, right = right, left^(mix(key+round, right)&mask)
		}
		x = left<<half | right
		if x < n {
			return x
		}
	}
}

const itemContentType = `{"id":"0x0100B239ACAA35349546A923BB0F799FAD6E00","name":"Item"}`

// appendItemLocked appends one listItem (or tombstone) of a delta page.
// older writes a deleted item's last live version, or a live item's
// previous version (the duplicates knob).
func (l *List) appendItemLocked(b []byte, id int, q deltaQuery, k Knobs, older bool) []byte {
	it := &l.items[id]
	st := l.site
	if it.state == stateDeleted && !older {
		w := objWriter{b: append(b, '{'), first: true}
		w.str("id", strconv.Itoa(id))
		if k.Tombstones != RemovedAnnotation {
			w.raw("parentReference", `{"siteId":"`+st.siteGUID+`"}`)
			w.raw("contentType", itemContentType)
			w.raw("deleted", `{"state":"deleted"}`)
		}
		if k.Tombstones != DeletedFacet {
			w.raw("@removed", `{"reason":"deleted"}`)
		}
		return append(w.b, '}')
	}
	version, modified := it.version, it.modified
	if older && it.state == stateLive && version > 1 {
		version--
		modified = max(it.created, modified-60_000)
	}
	sel := q.topSel
	has := func(p string) bool { return sel == nil || sel[p] }
	w := objWriter{b: append(b, '{'), first: true}
	w.key("@odata.etag")
	w.b = l.appendETag(w.b, id, version)
	if has("createdDateTime") {
		w.time("createdDateTime", it.created)
	}
	if has("eTag") {
		w.key("eTag")
		w.b = l.appendETag(w.b, id, version)
	}
	w.key("id")
	w.b = append(w.b, '"')
	w.b = strconv.AppendInt(w.b, int64(id), 10)
	w.b = append(w.b, '"')
	if has("lastModifiedDateTime") {
		w.time("lastModifiedDateTime", modified)
	}
	if has("webUrl") {
		w.key("webUrl")
		w.b = append(w.b, l.webURLPrefix...)
		w.b = strconv.AppendInt(w.b, int64(id), 10)
		w.b = append(w.b, `_.000"`...)
	}
	if has("createdBy") {
		u := users[int(mix(l.salt, uint64(id))%uint64(len(users)))]
		w.raw("createdBy", u.createdBy)
	}
	// lastModifiedBy is not returned by delta (§1.1); items/{id} has it.
	if has("parentReference") {
		w.raw("parentReference", l.parentRef)
	}
	if has("contentType") {
		w.raw("contentType", itemContentType)
	}
	if q.expand {
		w.key("fields")
		w.b = l.appendFieldsLocked(w.b, id, true, q.fieldSel, older && it.state == stateLive)
	}
	return append(w.b, '}')
}

// writePage writes a delta page: the nextLink (more) or deltaLink (done)
// comes before "value", as Graph writes it (§1.7).
func (s *Sim) writePage(w http.ResponseWriter, r *http.Request, rt route, l *List, items []byte, n int, base string, q deltaQuery, next token, more bool) {
	next.listID = l.id
	next.page = more
	next.issued = s.now()
	next.serial = s.tokenSerial.Add(1)
	link := joinLink(base, q.opts, next.encode())
	f, _ := s.takeFault(rt, faultOnPage)
	if f.ForeignLink {
		if u, err := url.Parse(link); err == nil {
			u.Host = ForeignHost
			u.Scheme = "https"
			link = u.String()
		}
	}
	bp := bufPool.Get().(*[]byte)
	b := append((*bp)[:0], `{"@odata.context":`...)
	b = appendString(b, baseURL(r)+"/$metadata#Collection(microsoft.graph.listItem)")
	if more {
		b = append(b, `,"@odata.nextLink":`...)
	} else {
		b = append(b, `,"@odata.deltaLink":`...)
	}
	b = appendString(b, link)
	b = append(b, `,"value":[`...)
	b = append(b, items...)
	b = append(b, "]}"...)
	if f.Malformed {
		b = b[:len(b)/2]
	}
	s.count(func(st *Stats) { st.Pages++; st.Items += int64(n) })
	h := w.Header()
	h.Set("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	w.Write(b)
	*bp = b[:0]
	bufPool.Put(bp)
}

// joinLink builds an absolute link carrying the original query options
// verbatim, plus a token when given (§1.1: options are encoded into every
// nextLink and deltaLink; clients must not re-add them).
func joinLink(base string, opts []string, tok string) string {
	parts := opts
	if tok != "" {
		parts = append(append([]string(nil), opts...), "token="+url.QueryEscape(tok))
	}
	if len(parts) == 0 {
		return base
	}
	return base + "?" + strings.Join(parts, "&")
}

func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + "/v1.0"
}
