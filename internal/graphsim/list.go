package graphsim

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"sync"
	"time"
)

// itemState says whether an id holds a live item, a tombstone, or nothing.
type itemState uint8

const (
	stateEmpty   itemState = iota // never created, or purged / deleted without a tombstone
	stateLive                     // a live item
	stateDeleted                  // a tombstone, reported by delta until retention purges it
)

// item is one list item. It is kept small (64 bytes) so that a list of a
// million items fits in well under 100 MB: generated items store only the
// seed their fields are derived from, not the fields themselves.
type item struct {
	change   uint64  // change number of the latest mutation (reference §7.3)
	created  int64   // unix milliseconds
	modified int64   // unix milliseconds (for a tombstone: when it was deleted)
	cur      content // the fields of the current version
	prev     content // the fields of the previous version (for the duplicates knob)
	version  uint32  // _UIVersion major, 1-based
	state    itemState
}

// content is one version's user fields: either generated from a seed, or
// given explicitly through Upsert.
type content struct {
	gen uint64
	raw *rawFields // non-nil: explicit fields
}

// rawFields are fields given by a test through Upsert, encoded once, sorted
// by name.
type rawFields struct {
	f []rawField
}

type rawField struct {
	name string
	raw  []byte
}

// logEntry records one mutation. The log is append-only and sorted by change,
// so the entries after a token are found by binary search. An entry is
// current while its item's change still equals it; superseded entries are
// skipped when a round walks the log (latest-state semantics, reference §1.1).
type logEntry struct {
	change uint64
	id     uint32
}

// List is one simulated SharePoint list. All methods are safe for concurrent
// use with each other and with requests being served.
type List struct {
	sim     *Sim
	site    *site
	id      string // list GUID
	name    string // display name
	urlName string // the name in webUrl (display name without spaces)
	salt    uint64 // per-list salt for item GUIDs and knob decisions

	webURLPrefix string // `"https://host/sites/x/Lists/Name/`, for items' webUrl
	parentRef    string // items' parentReference JSON

	mu            sync.RWMutex
	items         []item // indexed by item id; index 0 is unused
	log           []logEntry
	seq           uint64 // last change number handed out
	live          int
	tombs         []uint32 // ids deleted with a tombstone, in deletion order (for purging)
	purgedThrough uint64   // highest change of a purged tombstone: older tokens get 410
	expireSerial  uint64   // tokens with a serial ≤ this are refused with 410
	deletions     []Deletion
	knobs         Knobs
	rng           *rand.Rand // for MutatePerPage
}

// ID returns the list's GUID, as Graph returns it in the list resource.
func (l *List) ID() string { return l.id }

// Name returns the list's display name.
func (l *List) Name() string { return l.name }

// SiteID returns the composite id ("hostname,site-guid,web-guid") of the list's site.
func (l *List) SiteID() string { return l.site.id }

// Len returns the number of live items.
func (l *List) Len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.live
}

// Seq returns the list's latest change number. Tests use it to tell whether
// anything changed; it is also what a deltaLink issued now would carry.
func (l *List) Seq() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.seq
}

// Add creates an item with the next free id and the given fields, and
// returns that id. SharePoint assigns ids sequentially and never reuses them.
func (l *List) Add(fields map[string]any) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := len(l.items)
	if id == 0 {
		id = 1
	}
	l.upsertLocked(id, content{raw: encodeFields(fields)})
	return id
}

// Upsert creates or replaces item id with the given fields (user columns by
// internal name, e.g. "Title", "Ship_x0020_To"). System fields (id, Created,
// Modified, _UIVersionString, AuthorLookupId, ...) are added by the simulator
// and override keys of the same name. Values are JSON-encoded now; a value
// that cannot be encoded panics, since that is a bug in the calling test.
// Upserting a deleted id restores it (as a recycle-bin restore would).
func (l *List) Upsert(id int, fields map[string]any) {
	if id <= 0 {
		panic(fmt.Sprintf("graphsim: item id %d: ids are positive integers", id))
	}
	enc := encodeFields(fields)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.upsertLocked(id, content{raw: enc})
}

// Delete deletes item id and records a tombstone that delta reports with the
// deleted facet until TombstoneRetention passes. It reports whether the item
// was live.
func (l *List) Delete(id int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deleteLocked(id, true)
}

// DeleteUnreported deletes item id without a tombstone: no delta round will
// ever report it, and only a full enumeration reveals that it is gone. It
// models the missing tombstones of reference §1.5.
func (l *List) DeleteUnreported(id int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deleteLocked(id, false)
}

// Populate adds n items with generated, realistic field values (see Fields
// for the columns). The same seed gives the same values.
func (l *List) Populate(n int, seed uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	first := max(len(l.items), 1)
	if need := first + n; cap(l.items) < need {
		grown := make([]item, len(l.items), need)
		copy(grown, l.items)
		l.items = grown
	}
	if cap(l.log)-len(l.log) < n {
		grown := make([]logEntry, len(l.log), len(l.log)+n)
		copy(grown, l.log)
		l.log = grown
	}
	for i := 0; i < n; i++ {
		id := first + i
		l.upsertLocked(id, content{gen: mix(seed, uint64(id))})
	}
}

// Churn applies random changes: adds new generated items, edits live items
// (each edit replaces the item's fields with a new generated version and
// bumps its version), and deletes live items with tombstones. An edit or
// delete finds no item when the list is empty, and is then skipped.
func (l *List) Churn(rng *rand.Rand, adds, edits, deletes int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.churnLocked(rng, adds, edits, deletes)
}

func (l *List) churnLocked(rng *rand.Rand, adds, edits, deletes int) {
	for i := 0; i < adds; i++ {
		l.upsertLocked(max(len(l.items), 1), content{gen: rng.Uint64()})
	}
	for i := 0; i < edits; i++ {
		if id, ok := l.randomLiveLocked(rng); ok {
			l.upsertLocked(id, content{gen: rng.Uint64()})
		}
	}
	for i := 0; i < deletes; i++ {
		if id, ok := l.randomLiveLocked(rng); ok {
			l.deleteLocked(id, true)
		}
	}
}

// randomLiveLocked picks a live item id, probing from a random start.
func (l *List) randomLiveLocked(rng *rand.Rand) (int, bool) {
	n := len(l.items)
	if l.live == 0 || n < 2 {
		return 0, false
	}
	start := 1 + rng.IntN(n-1)
	for i := 0; i < n-1; i++ {
		id := 1 + (start-1+i)%(n-1)
		if l.items[id].state == stateLive {
			return id, true
		}
	}
	return 0, false
}

// upsertLocked writes a new version of item id.
func (l *List) upsertLocked(id int, c content) {
	if id >= len(l.items) {
		l.items = append(l.items, make([]item, id+1-len(l.items))...)
	}
	now := l.sim.now().UnixMilli()
	it := &l.items[id]
	switch it.state {
	case stateLive:
		it.version++
		it.prev = it.cur
	case stateEmpty:
		it.created = now
		fallthrough
	default: // new, or a tombstone being restored: version history restarts
		it.version = 1
		it.prev = c
		l.live++
	}
	it.cur = c
	it.state = stateLive
	it.modified = now
	l.appendLocked(id)
}

func (l *List) deleteLocked(id int, tombstone bool) bool {
	if id <= 0 || id >= len(l.items) || l.items[id].state != stateLive {
		return false
	}
	it := &l.items[id]
	l.live--
	now := l.sim.now()
	if !tombstone {
		*it = item{}
		l.deletions = append(l.deletions, Deletion{ID: id, At: now, Unreported: true})
		return true
	}
	it.state = stateDeleted
	it.modified = now.UnixMilli()
	l.appendLocked(id)
	l.deletions = append(l.deletions, Deletion{ID: id, Change: l.seq, At: now})
	l.tombs = append(l.tombs, uint32(id))
	return true
}

func (l *List) appendLocked(id int) {
	l.seq++
	l.items[id].change = l.seq
	l.log = append(l.log, logEntry{change: l.seq, id: uint32(id)})
}

// Deletion is one delete in a list's history.
type Deletion struct {
	ID int `json:"id"`
	// Change is the change number of the delete; 0 for an unreported one.
	Change uint64    `json:"change,omitempty"`
	At     time.Time `json:"at"` // by the simulator's clock
	// Unreported: deleted without a tombstone (DeleteUnreported).
	Unreported bool `json:"unreported,omitempty"`
}

// Deletions returns every delete of the list's life so far, oldest first,
// reported or not, whatever tombstone retention purged since: what a test
// needs to tell a consumer's delete of a deleted item from a false one.
func (l *List) Deletions() []Deletion {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return append([]Deletion(nil), l.deletions...)
}

// purgeLocked forgets tombstones older than the retention period. A token
// older than a purged tombstone can no longer be answered correctly, so it
// is refused with 410 from then on (reference §1.1: token lifetime is bounded
// by change-log retention).
func (l *List) purgeLocked(now time.Time) {
	ret := l.sim.opts.TombstoneRetention
	cutoff := now.Add(-ret).UnixMilli()
	n := 0
	for _, id := range l.tombs {
		it := &l.items[id]
		if it.state != stateDeleted {
			n++ // restored or already gone; drop the entry
			continue
		}
		if it.modified > cutoff {
			break
		}
		l.purgedThrough = max(l.purgedThrough, it.change)
		*it = item{}
		n++
	}
	if n > 0 {
		l.tombs = append(l.tombs[:0], l.tombs[n:]...)
	}
}

// ExpireTokens makes every delta token and nextLink issued for this list so
// far answer 410 Gone, with the code set in Knobs.Resync (reference §1.4).
func (l *List) ExpireTokens() {
	serial := l.sim.tokenSerial.Load()
	l.mu.Lock()
	l.expireSerial = serial
	l.mu.Unlock()
}

// SetKnobs replaces the list's adversarial knobs.
func (l *List) SetKnobs(k Knobs) {
	l.mu.Lock()
	l.knobs = k
	l.mu.Unlock()
}

// Knobs returns the list's current knobs.
func (l *List) Knobs() Knobs {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.knobs
}

// Snapshot returns the live items, keyed by item id as a decimal string, each
// the "fields" object that a delta page with $expand=fields (no $select)
// carries for it, decoded with encoding/json (numbers are float64, lookups
// and people are []any of map[string]any), with every key that contains "@"
// removed: "@odata.etag" and annotations such as "Regions@odata.type".
// System fields (id, ContentType, Created, Modified, _UIVersionString, ...)
// are included, as Graph returns them. This is exactly what a consumer that
// folds every round by item id, last occurrence wins, must hold.
func (l *List) Snapshot() map[string]map[string]any {
	out := make(map[string]map[string]any)
	l.mu.RLock()
	defer l.mu.RUnlock()
	var buf []byte
	for id := 1; id < len(l.items); id++ {
		if l.items[id].state != stateLive {
			continue
		}
		buf = l.appendFieldsLocked(buf[:0], id, false, nil, false)
		var m map[string]any
		if err := json.Unmarshal(buf, &m); err != nil {
			panic(fmt.Sprintf("graphsim: item %d encodes invalid JSON: %v", id, err))
		}
		out[strconv.Itoa(id)] = m
	}
	return out
}

// Fields returns the Snapshot entry of one item, or false if it is not live.
func (l *List) Fields(id int) (map[string]any, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if id <= 0 || id >= len(l.items) || l.items[id].state != stateLive {
		return nil, false
	}
	var m map[string]any
	if err := json.Unmarshal(l.appendFieldsLocked(nil, id, false, nil, false), &m); err != nil {
		panic(err)
	}
	return m, true
}

// encodeFields encodes test-supplied fields once, sorted by name.
func encodeFields(fields map[string]any) *rawFields {
	out := make([]rawField, 0, len(fields))
	for k, v := range fields {
		raw, err := json.Marshal(v)
		if err != nil {
			panic(fmt.Sprintf("graphsim: field %q: %v", k, err))
		}
		out = append(out, rawField{name: k, raw: raw})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return &rawFields{f: out}
}
