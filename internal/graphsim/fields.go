package graphsim

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// The generated list schema. Column names are internal names (reference §6):
// "Ship To" is Ship_x0020_To and "Weight (kg)" is Weight_x0020__x0028_kg_x0029_.
// Values follow the JSON shapes of reference §6 and §1.7(A): lookups and
// people as string "<Name>LookupId" values, multi-valued lookups and people as
// arrays of objects with numeric LookupId, managed metadata as
// {Label, TermGuid, WssId}, hyperlinks as {Description, Url}, and Graph omits
// a column whose value is empty.
//
//	Title                          text, "PO-<1000+id>", stable per item
//	Status                         choice
//	Regions                        multi-choice, annotated Collection(Edm.String)
//	Amount                         currency (JSON number, 2 decimals)
//	Quantity                       number (integer)
//	Discount                       number (fraction)
//	IsUrgent                       boolean
//	DueDate                        date only: UTC instant of midnight Pacific time
//	OrderedAt                      date and time, UTC
//	OwnerLookupId                  person (string id in the User Information List)
//	Reviewers                      multi-person, may be absent
//	CustomerLookupId               lookup (string), may be absent
//	RelatedOrders                  multi-lookup, may be absent
//	SpecLink                       hyperlink, may be absent
//	Category                       managed metadata
//	Tags                           multi managed metadata, annotated #Collection(microsoft.graph.Json), may be absent
//	Ship_x0020_To                  text, may be absent
//	Weight_x0020__x0028_kg_x0029_  number
//	Notes                          rich text (HTML string), may be absent
//
// Every item, generated or not, also carries the system fields listed in
// systemFields.
var generatedColumns = []string{
	"Title", "Status", "Regions", "Amount", "Quantity", "Discount", "IsUrgent",
	"DueDate", "OrderedAt", "OwnerLookupId", "Reviewers", "CustomerLookupId",
	"RelatedOrders", "SpecLink", "Category", "Tags", "Ship_x0020_To",
	"Weight_x0020__x0028_kg_x0029_", "Notes",
}

// systemFields are added to every item's fields, as SharePoint does (the
// Nango capture in reference §1.7). They override Upsert keys of the same name.
var systemFields = []string{
	"id", "ContentType", "Created", "Modified", "AuthorLookupId", "EditorLookupId",
	"_UIVersionString", "Attachments", "Edit", "LinkTitleNoMenu", "LinkTitle",
	"ItemChildCount", "FolderChildCount", "_ComplianceFlags", "_ComplianceTag",
	"_ComplianceTagWrittenTime", "_ComplianceTagUserId",
}

var isSystemField = func() map[string]bool {
	m := make(map[string]bool, len(systemFields))
	for _, f := range systemFields {
		m[f] = true
	}
	return m
}()

type person struct {
	id          int
	name, email string
	aadID       string
	createdBy   string // the listItem createdBy JSON, precomputed
}

func init() {
	for i := range users {
		u := &users[i]
		u.createdBy = `{"user":{"displayName":"` + u.name + `","email":"` + u.email + `","id":"` + u.aadID + `"}}`
	}
}

// users is the site's User Information List (lookup ids are not Entra ids, §6).
var users = []person{
	{7, "Taylor Conlin", "TaylorC@contoso.onmicrosoft.com", "9e024298-89f1-4d46-b5f2-ae4673ecbaca", ""},
	{10, "Henrietta Mueller", "HenriettaM@contoso.onmicrosoft.com", "c8913c86-ceea-4d39-b1ea-f63a5b675166", ""},
	{12, "Alex Wilber", "AlexW@contoso.onmicrosoft.com", "3d3a9b40-1a4f-4d5b-9c7e-0d3b3c1e2a11", ""},
	{14, "Adele Vance", "AdeleV@contoso.onmicrosoft.com", "59bb3898-0621-4414-ac61-74f9d7201355", ""},
	{15, "Megan Bowen", "MeganB@contoso.onmicrosoft.com", "ec63c778-24e1-4240-bea3-d12a167d5232", ""},
	{18, "Lee Gu", "LeeG@contoso.onmicrosoft.com", "e8a02cc7-df4d-4778-956d-784cc9506e5a", ""},
	{21, "Nestor Wilke", "NestorW@contoso.onmicrosoft.com", "8b209ac8-08ff-4ef1-896d-3b9fde0bbb04", ""},
	{23, "Lidia Holloway", "LidiaH@contoso.onmicrosoft.com", "2ed03dfd-01d8-4005-a9ef-fa8ee546dc6c", ""},
}

var (
	statuses  = []string{"Draft", "Submitted", "Approved", "Shipped", "Cancelled"}
	regions   = []string{"EMEA", "APAC", "AMER", "LATAM"}
	cities    = []string{"Seattle, WA", "München", "São Paulo", "Zürich \"HQ\"", "東京", "Lyon\nDock 4", "Cape Town"}
	customers = []string{"Fabrikam", "Northwind Traders", "Tailspin Toys", "Wide World Importers",
		"Adventure Works", "Litware", "Proseware", "Woodgrove Bank", "Alpine Ski House", "Contoso Pharma"}
	terms = []struct{ label, guid string }{
		{"Hardware", "5282b948-2202-4ef4-9b0b-74cbc3944e33"},
		{"Software", "8ed8c9ea-7052-4c1d-a4d7-b9c10bffea6f"},
		{"Services", "1a9b4d2c-3e5f-4a6b-8c7d-9e0f1a2b3c4d"},
		{"sign", "ffffffff-ffff-ffff-ffff-ffffffffeb87"},
		{"text", "ffffffff-ffff-ffff-ffff-ffffffffe8c6"},
	}
)

// prng is splitmix64: tiny, fast and deterministic, so an item's fields can
// be regenerated from its seed on every request instead of being stored.
type prng uint64

func (p *prng) next() uint64 {
	*p += 0x9e3779b97f4a7c15
	z := uint64(*p)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func (p *prng) intn(n int) int { return int(p.next() % uint64(n)) }

// mix combines two values into a well-distributed 64-bit hash.
func mix(a, b uint64) uint64 {
	p := prng(a ^ (b * 0x9e3779b97f4a7c15))
	p.next()
	return p.next()
}

// fieldSel is a $select list of fields; nil selects every default field.
type fieldSel map[string]bool

func (s fieldSel) has(name string) bool { return s == nil || s[name] }

// objWriter writes the members of one JSON object.
type objWriter struct {
	b     []byte
	first bool
}

// key writes a member name. Names written by the simulator are plain ASCII
// and need no escaping; names from Upsert go through appendString.
func (w *objWriter) key(k string) {
	if !w.first {
		w.b = append(w.b, ',')
	}
	w.first = false
	w.b = append(w.b, '"')
	w.b = append(w.b, k...)
	w.b = append(w.b, '"', ':')
}

func (w *objWriter) time(k string, ms int64) {
	w.key(k)
	w.b = appendTime(w.b, ms)
}

func (w *objWriter) str(k, v string) { w.key(k); w.b = appendString(w.b, v) }
func (w *objWriter) raw(k, v string) { w.key(k); w.b = append(w.b, v...) }
func (w *objWriter) num(k string, v float64) {
	w.key(k)
	w.b = strconv.AppendFloat(w.b, v, 'f', -1, 64)
}
func (w *objWriter) boolean(k string, v bool) { w.key(k); w.b = strconv.AppendBool(w.b, v) }

// appendFieldsLocked appends the "fields" object of item id. annotations
// adds "@odata.etag" and the "<Name>@odata.type" annotations; usePrev writes
// the item's previous version (the duplicates knob).
func (l *List) appendFieldsLocked(b []byte, id int, annotations bool, sel fieldSel, usePrev bool) []byte {
	it := &l.items[id]
	c, version, modified := it.cur, it.version, it.modified
	if usePrev && version > 1 {
		c, version = it.prev, version-1
		modified = max(it.created, modified-60_000)
	}
	w := objWriter{b: append(b, '{'), first: true}
	if annotations {
		w.key("@odata.etag")
		w.b = l.appendETag(w.b, id, version)
	}
	if sel.has("id") {
		w.key("id")
		w.b = append(w.b, '"')
		w.b = strconv.AppendInt(w.b, int64(id), 10)
		w.b = append(w.b, '"')
	}
	title := ""
	if c.raw != nil {
		for _, f := range c.raw.f {
			if isSystemField[f.name] || !selectedName(sel, f.name) {
				continue
			}
			if !annotations && containsAt(f.name) {
				continue
			}
			if !w.first {
				w.b = append(w.b, ',')
			}
			w.first = false
			w.b = appendString(w.b, f.name)
			w.b = append(w.b, ':')
			w.b = append(w.b, f.raw...)
			if f.name == "Title" {
				title = string(f.raw)
			}
		}
	} else {
		title = l.appendGenerated(&w, id, c.gen, annotations, sel)
	}
	// System fields (reference §1.7 A, §6).
	author := users[int(mix(l.salt, uint64(id))%uint64(len(users)))]
	editor := users[int(c.gen%uint64(len(users)))]
	if sel.has("ContentType") {
		w.str("ContentType", "Item")
	}
	if sel.has("Created") {
		w.time("Created", it.created)
	}
	if sel.has("Modified") {
		w.time("Modified", modified)
	}
	if sel.has("AuthorLookupId") {
		w.str("AuthorLookupId", strconv.Itoa(author.id))
	}
	if sel.has("EditorLookupId") {
		w.str("EditorLookupId", strconv.Itoa(editor.id))
	}
	if sel.has("_UIVersionString") {
		w.str("_UIVersionString", strconv.Itoa(int(version))+".0")
	}
	if sel.has("Attachments") {
		w.boolean("Attachments", false)
	}
	if sel.has("Edit") {
		w.str("Edit", "")
	}
	if title != "" {
		if sel.has("LinkTitleNoMenu") {
			w.raw("LinkTitleNoMenu", title)
		}
		if sel.has("LinkTitle") {
			w.raw("LinkTitle", title)
		}
	}
	for _, k := range []string{"ItemChildCount", "FolderChildCount"} {
		if sel.has(k) {
			w.str(k, "0") // strings, as Graph returns them (§6)
		}
	}
	for _, k := range []string{"_ComplianceFlags", "_ComplianceTag", "_ComplianceTagWrittenTime", "_ComplianceTagUserId"} {
		if sel.has(k) {
			w.str(k, "")
		}
	}
	return append(w.b, '}')
}

// selectedName reports whether an explicit field (or its annotation) is selected.
func selectedName(sel fieldSel, name string) bool {
	if sel == nil {
		return true
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '@' {
			return sel[name[:i]]
		}
	}
	return sel[name]
}

func containsAt(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == '@' {
			return true
		}
	}
	return false
}

// appendGenerated writes the generated user columns and returns the quoted
// Title (for LinkTitle).
func (l *List) appendGenerated(w *objWriter, id int, gen uint64, annotations bool, sel fieldSel) string {
	r := prng(gen)
	title := `"PO-` + strconv.Itoa(1000+id) + `"`
	if sel.has("Title") {
		w.raw("Title", title)
	}
	status := statuses[r.intn(len(statuses))]
	if sel.has("Status") {
		w.str("Status", status)
	}
	mask := r.intn(16)
	if sel.has("Regions") {
		if annotations {
			w.str("Regions@odata.type", "Collection(Edm.String)")
		}
		w.key("Regions")
		w.b = append(w.b, '[')
		n := 0
		for i, reg := range regions {
			if mask&(1<<i) != 0 {
				if n > 0 {
					w.b = append(w.b, ',')
				}
				w.b = appendString(w.b, reg)
				n++
			}
		}
		w.b = append(w.b, ']')
	}
	amount := float64(r.intn(5_000_000)) / 100
	if sel.has("Amount") {
		w.num("Amount", amount)
	}
	qty := 1 + r.intn(500)
	if sel.has("Quantity") {
		w.num("Quantity", float64(qty))
	}
	disc := []float64{0, 0.05, 0.1, 0.125, 0.2}[r.intn(5)]
	if sel.has("Discount") {
		w.num("Discount", disc)
	}
	urgent := r.intn(4) == 0
	if sel.has("IsUrgent") {
		w.boolean("IsUrgent", urgent)
	}
	// Date-only columns come back as the UTC instant of local midnight in the
	// site's time zone (§6): 07:00Z in Pacific daylight time, 08:00Z otherwise.
	day := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, r.intn(900))
	hour := 8
	if m := day.Month(); m >= time.April && m <= time.October {
		hour = 7
	}
	if sel.has("DueDate") {
		w.time("DueDate", day.Add(time.Duration(hour)*time.Hour).UnixMilli())
	}
	ordered := day.Add(-time.Duration(r.intn(30*24*3600)) * time.Second)
	if sel.has("OrderedAt") {
		w.time("OrderedAt", ordered.UnixMilli())
	}
	owner := users[r.intn(len(users))]
	if sel.has("OwnerLookupId") {
		w.str("OwnerLookupId", strconv.Itoa(owner.id))
	}
	nrev := r.intn(4)
	if nrev > 0 && sel.has("Reviewers") {
		w.key("Reviewers")
		w.b = append(w.b, '[')
		start := r.intn(len(users))
		for i := 0; i < nrev; i++ {
			u := users[(start+i)%len(users)]
			if i > 0 {
				w.b = append(w.b, ',')
			}
			o := objWriter{b: append(w.b, '{'), first: true}
			o.num("LookupId", float64(u.id))
			o.str("LookupValue", u.name)
			o.str("Email", u.email)
			w.b = append(o.b, '}')
		}
		w.b = append(w.b, ']')
	}
	cust := r.intn(len(customers) + 1) // 0: no customer
	if cust > 0 && sel.has("CustomerLookupId") {
		w.str("CustomerLookupId", strconv.Itoa(cust))
	}
	nrel := r.intn(3)
	if nrel > 0 && id > 1 && sel.has("RelatedOrders") {
		w.key("RelatedOrders")
		w.b = append(w.b, '[')
		for i := 0; i < nrel; i++ {
			rel := 1 + r.intn(id-1)
			if i > 0 {
				w.b = append(w.b, ',')
			}
			o := objWriter{b: append(w.b, '{'), first: true}
			o.num("LookupId", float64(rel))
			o.str("LookupValue", "PO-"+strconv.Itoa(1000+rel))
			w.b = append(o.b, '}')
		}
		w.b = append(w.b, ']')
	}
	if r.intn(4) > 0 && sel.has("SpecLink") {
		w.key("SpecLink")
		o := objWriter{b: append(w.b, '{'), first: true}
		o.str("Description", "Spec "+strconv.Itoa(1000+id))
		o.str("Url", "https://contoso.sharepoint.com/sites/ops/Shared%20Documents/spec-"+strconv.Itoa(id)+".docx")
		w.b = append(o.b, '}')
	}
	cat := r.intn(3)
	if sel.has("Category") {
		w.key("Category")
		w.b = appendTerm(w.b, cat)
	}
	ntags := r.intn(3)
	if ntags > 0 && sel.has("Tags") {
		if annotations {
			w.str("Tags@odata.type", "#Collection(microsoft.graph.Json)")
		}
		w.key("Tags")
		w.b = append(w.b, '[')
		for i := 0; i < ntags; i++ {
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.b = appendTerm(w.b, 3+i)
		}
		w.b = append(w.b, ']')
	}
	city := r.intn(len(cities) + 1)
	if city > 0 && sel.has("Ship_x0020_To") {
		w.str("Ship_x0020_To", cities[city-1])
	}
	weight := float64(r.intn(100_000)) / 10
	if sel.has("Weight_x0020__x0028_kg_x0029_") {
		w.num("Weight_x0020__x0028_kg_x0029_", weight)
	}
	if r.intn(5) < 3 && sel.has("Notes") {
		w.str("Notes", `<div class="ExternalClass"><p>Deliver to <b>`+customers[r.intn(len(customers))]+`</b> &amp; call ahead.</p></div>`)
	}
	return title
}

func appendTerm(b []byte, i int) []byte {
	t := terms[i%len(terms)]
	o := objWriter{b: append(b, '{'), first: true}
	o.str("Label", t.label)
	o.str("TermGuid", t.guid)
	o.num("WssId", float64(1+i))
	return append(o.b, '}')
}

const timeLayout = "2006-01-02T15:04:05Z"

// appendTime appends a quoted UTC timestamp with second precision, the form
// Graph uses for listItem dates (§1.7).
func appendTime(b []byte, ms int64) []byte {
	b = append(b, '"')
	b = time.UnixMilli(ms).UTC().AppendFormat(b, timeLayout)
	return append(b, '"')
}

// appendETag appends the quoted JSON string "\"{GUID},version\"".
func (l *List) appendETag(b []byte, id int, version uint32) []byte {
	b = append(b, `"\"{`...)
	b = appendGUID(b, mix(l.salt, uint64(id)), mix(uint64(id), l.salt), true)
	b = append(b, "},"...)
	b = strconv.AppendUint(b, uint64(version), 10)
	return append(b, `\""`...)
}

// appendGUID formats 128 bits as a GUID.
func appendGUID(b []byte, hi, lo uint64, upper bool) []byte {
	const lowerHex, upperHex = "0123456789abcdef", "0123456789ABCDEF"
	digits := lowerHex
	if upper {
		digits = upperHex
	}
	var raw [16]byte
	for i := 0; i < 8; i++ {
		raw[i] = byte(hi >> (56 - 8*i))
		raw[8+i] = byte(lo >> (56 - 8*i))
	}
	raw[6] = raw[6]&0x0f | 0x40 // version 4
	raw[8] = raw[8]&0x3f | 0x80 // variant
	for i, c := range raw {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b = append(b, '-')
		}
		b = append(b, digits[c>>4], digits[c&0xf])
	}
	return b
}

func guid(hi, lo uint64) string { return string(appendGUID(nil, hi, lo, false)) }

var safeASCII = func() (t [256]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if safeASCII[c] {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, s[start:i]...)
				b = append(b, `\ufffd`...)
				i++
				start = i
				continue
			}
			i += size
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
