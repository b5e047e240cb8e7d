package sharepoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/changelog"
)

// Page is one answer of a list-item delta request (reference §1.1): the
// items in Graph's order, and exactly one of NextLink (more pages in this
// round) or DeltaLink (round complete; keep it for the next pass).
type Page struct {
	Items     []Item
	NextLink  string
	DeltaLink string
	Bytes     int64 // body size, for reporting
}

// Item is one listItem of a delta page.
type Item struct {
	ID      string
	Deleted bool   // the deleted facet, or @removed (reference §1.3: handle both)
	ETag    string // eTag, else @odata.etag
	// Modified is lastModifiedDateTime, else fields.Modified.
	Modified string
	// Fields is the item's fields object with every OData annotation removed
	// (any key containing "@": "@odata.etag", "Tags@odata.type"), values and
	// key order as Graph sent them, whitespace compacted. Nil for deletes and
	// when fields were not expanded.
	Fields json.RawMessage
}

// DeltaURL is the first request of a full round for a list: the token-less
// delta with fields expanded (reference §1.1). Query options go only on this
// first request; Graph carries them in every link after it (§1.1
// "$select / $expand"), so changing fields needs a new full round. With
// fields, only those columns are returned: $expand=fields($select=A,B) (§6).
func DeltaURL(graphURL, siteID, listID string, fields []string) string {
	var b strings.Builder
	b.WriteString(strings.TrimRight(graphURL, "/"))
	b.WriteString("/sites/" + escapeSegment(siteID))
	b.WriteString("/lists/" + escapeSegment(listID))
	b.WriteString("/items/delta?$expand=fields")
	if len(fields) > 0 {
		b.WriteString("($select=")
		for i, f := range fields {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strings.ReplaceAll(url.QueryEscape(f), "+", "%20"))
		}
		b.WriteString(")")
	}
	// Bigger pages: fewer requests (each costs resource units, reference
	// §1.6) for the same items; Graph documents $top for delta (§1.1) and
	// may still send fewer per page.
	b.WriteString("&$top=" + strconv.Itoa(PageSize))
	return b.String()
}

// PageSize is the $top of delta requests.
const PageSize = 1000

// escapeSegment escapes one path segment but keeps the commas of composite
// site ids ("host,siteGuid,webGuid") and the colon of "host:" as Graph
// writes them.
func escapeSegment(s string) string {
	return strings.ReplaceAll(url.PathEscape(s), "%2C", ",")
}

// Page GETs one delta page. link is DeltaURL's result, a nextLink or
// deltaLink, or a 410 Location, used verbatim (links are opaque, reference
// §1.7); it must be on the Graph host. Errors: *ThrottledError,
// *ResyncError, *StatusError, or a description of a malformed page.
func (c *Client) Page(ctx context.Context, link string) (*Page, error) {
	u, err := c.checkLink(link)
	if err != nil {
		return nil, err
	}
	r := request{
		url:      u,
		subject:  subjectOf(u),
		notFound: "the site or list no longer exists, or the link is not a list-item delta link",
	}
	var p *Page
	err = c.get(ctx, r, func(resp *http.Response) error {
		var err error
		p, err = c.decodePage(resp, u)
		return err
	})
	if err != nil {
		return nil, err
	}
	c.stats.pages.Add(1)
	c.stats.items.Add(int64(len(p.Items)))
	return p, nil
}

// subjectOf names the site and list of a Graph URL for messages.
func subjectOf(u *url.URL) string {
	parts := strings.Split(u.Path, "/")
	var site, list string
	for i := 0; i+1 < len(parts); i++ {
		switch parts[i] {
		case "sites":
			if site == "" {
				site = parts[i+1]
			}
		case "lists":
			if list == "" {
				list = parts[i+1]
			}
		}
	}
	switch {
	case site != "" && list != "":
		return "site " + site + ", list " + list
	case site != "":
		return "site " + site
	}
	return ""
}

var errPageTooLarge = errors.New("page too large")

// limitReader fails with errPageTooLarge once more than n bytes were read,
// instead of silently truncating like io.LimitReader.
type limitReader struct {
	r    io.Reader
	n    int64 // bytes still allowed
	read int64
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n < 0 {
		return 0, errPageTooLarge
	}
	if int64(len(p)) > l.n+1 {
		p = p[:l.n+1] // one byte past the limit proves the body is too large
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	l.read += int64(n)
	if l.n < 0 {
		return n, errPageTooLarge
	}
	return n, err
}

// decodePage stream-decodes a page: items are decoded one at a time, so the
// whole body is never held twice. It checks the shape of reference §1.1 and
// §1.7: an object with a value array and exactly one of the two links, each
// on the Graph host.
func (c *Client) decodePage(resp *http.Response, u *url.URL) (*Page, error) {
	if resp.ContentLength > c.maxPageBytes {
		return nil, fmt.Errorf("Graph page from %s is %d bytes, more than the limit of %d (MaxPageBytes)", redact(u), resp.ContentLength, c.maxPageBytes)
	}
	// Fast path: read the (bounded) page, validate it in one pass, then
	// walk the already-valid bytes. Anything unusual — a read error, invalid
	// JSON, an unexpected shape — goes through the streaming decoder below,
	// which says what is wrong and at which byte.
	lr := &limitReader{r: resp.Body, n: c.maxPageBytes}
	buf, _ := c.bufs.Get().(*bytes.Buffer)
	if buf == nil {
		buf = new(bytes.Buffer)
	}
	defer func() {
		if buf.Cap() <= 16<<20 { // do not keep a huge page's buffer
			buf.Reset()
			c.bufs.Put(buf)
		}
	}()
	buf.Reset()
	if resp.ContentLength > 0 {
		buf.Grow(int(resp.ContentLength) + 1)
	}
	_, readErr := buf.ReadFrom(lr)
	data := buf.Bytes()
	if readErr == nil && json.Valid(data) {
		// Items copy what they keep (ids, cleaned fields), so the buffer can
		// be reused for the next page.
		if p, ok := fastPage(data); ok {
			p.Bytes = int64(len(data))
			return c.checkPage(p, u, true, p.NextLink != "", p.DeltaLink != "")
		}
	}
	return c.decodePageStream(io.MultiReader(bytes.NewReader(data), errReader{readErr}), u)
}

// errReader returns err (io.EOF when nil) after the bytes read before it.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == nil {
		return 0, io.EOF
	}
	return 0, e.err
}

func (c *Client) decodePageStream(r io.Reader, u *url.URL) (*Page, error) {
	body := &limitReader{r: r, n: c.maxPageBytes}
	dec := json.NewDecoder(body)
	p := &Page{}
	fail := func(err error) (*Page, error) { return nil, c.pageError(u, dec, body, err) }

	if err := expectDelim(dec, '{'); err != nil {
		return fail(err)
	}
	var sawValue, sawNext, sawDelta bool
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return fail(err)
		}
		key, _ := t.(string)
		switch key {
		case "value":
			if err := expectDelim(dec, '['); err != nil {
				return fail(fmt.Errorf("value: %w", err))
			}
			for dec.More() {
				var ri rawItem
				if err := dec.Decode(&ri); err != nil {
					return fail(err)
				}
				it, err := ri.item()
				if err != nil {
					return fail(&decodeError{fmt.Sprintf("item %d of value: %v", len(p.Items), err)})
				}
				p.Items = append(p.Items, it)
			}
			if _, err := dec.Token(); err != nil { // ']'
				return fail(err)
			}
			sawValue = true
		case "@odata.nextLink":
			if err := dec.Decode(&p.NextLink); err != nil {
				return fail(err)
			}
			sawNext = true
		case "@odata.deltaLink":
			if err := dec.Decode(&p.DeltaLink); err != nil {
				return fail(err)
			}
			sawDelta = true
		default: // @odata.context and anything newer: not ours to judge
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return fail(err)
			}
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return fail(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = &decodeError{"data after the page object"}
		}
		return fail(err)
	}
	p.Bytes = body.read
	return c.checkPage(p, u, sawValue, sawNext, sawDelta)
}

// checkPage applies the shape rules of reference §1.1 to a decoded page.
func (c *Client) checkPage(p *Page, u *url.URL, sawValue, sawNext, sawDelta bool) (*Page, error) {
	switch {
	case !sawValue:
		return nil, fmt.Errorf("Graph page from %s has no value array", redact(u))
	case sawNext && sawDelta:
		return nil, fmt.Errorf("Graph page from %s has both @odata.nextLink and @odata.deltaLink", redact(u))
	case !sawNext && !sawDelta:
		return nil, fmt.Errorf("Graph page has neither @odata.nextLink nor @odata.deltaLink (GET %s)", redact(u))
	}
	link := p.NextLink + p.DeltaLink
	if link == "" {
		return nil, fmt.Errorf("Graph page from %s has an empty link", redact(u))
	}
	if _, err := c.checkLink(link); err != nil {
		return nil, fmt.Errorf("Graph page from %s: %w", redact(u), err)
	}
	return p, nil
}

// fastPage walks a page that json.Valid accepted. ok is false when the page
// is not the usual shape (the streaming decoder then reports why), or when
// it has no value array, so that the checks see the same page either way.
func fastPage(data []byte) (p *Page, ok bool) {
	p = &Page{}
	sawValue := false
	okMembers := members(data, func(key string, val []byte) bool {
		switch key {
		case "value":
			if len(val) == 0 || val[0] != '[' {
				return false
			}
			sawValue = true
			return elements(val, func(arr []byte, at int) (int, bool) {
				var ri rawItem
				end, okItem := membersFrom(arr, at, func(k string, v []byte) bool {
					switch k {
					case "id":
						ri.ID = v
					case "eTag":
						ri.ETag, ok = unquote(v)
					case "@odata.etag":
						ri.ODataETag, ok = unquote(v)
					case "lastModifiedDateTime":
						ri.LastModified, ok = unquote(v)
					case "deleted":
						ri.Deleted = v
					case "@removed":
						ri.Removed = v
					case "fields":
						ri.Fields = v
					default:
						return true
					}
					return ok || (k != "eTag" && k != "@odata.etag" && k != "lastModifiedDateTime")
				})
				if !okItem {
					return end, false
				}
				it, err := ri.item()
				if err != nil {
					return end, false
				}
				p.Items = append(p.Items, it)
				return end, true
			})
		case "@odata.nextLink":
			p.NextLink, ok = unquote(val)
			return ok
		case "@odata.deltaLink":
			p.DeltaLink, ok = unquote(val)
			return ok
		}
		return true
	})
	if !okMembers || !sawValue {
		return nil, false
	}
	return p, true
}

// members calls fn for each member of the JSON object b (valid JSON) with
// the unquoted key and the raw value; false from fn, or b not being an
// object, stops with false.
func members(b []byte, fn func(key string, val []byte) bool) bool {
	_, ok := membersFrom(b, skipSpace(b, 0), fn)
	return ok
}

// membersFrom walks the object starting at b[i] and returns the index after
// it, so that a caller walking an array need not scan each element twice.
func membersFrom(b []byte, i int, fn func(key string, val []byte) bool) (int, bool) {
	if i >= len(b) || b[i] != '{' {
		return i, false
	}
	for i++; ; {
		i = skipSpace(b, i)
		if i >= len(b) {
			return i, false
		}
		switch b[i] {
		case '}':
			return i + 1, true
		case ',':
			i++
			continue
		}
		ks := i
		i = skipValue(b, i)
		key, ok := unquote(b[ks:i])
		if !ok {
			return i, false
		}
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != ':' {
			return i, false
		}
		i = skipSpace(b, i+1)
		vs := i
		i = skipValue(b, i)
		if !fn(key, b[vs:i]) {
			return i, false
		}
	}
}

// elements calls fn for each element of the JSON array b (valid JSON); fn
// gets the array and the element's start and returns the index after it.
func elements(b []byte, fn func(b []byte, i int) (int, bool)) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return false
	}
	for i++; ; {
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ']':
			return true
		case ',':
			i++
			continue
		}
		var ok bool
		if i, ok = fn(b, i); !ok {
			return false
		}
	}
}

// unquote reads a JSON string value.
func unquote(v []byte) (string, bool) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", false
	}
	if bytes.IndexByte(v, '\\') < 0 && utf8.Valid(v) {
		return string(v[1 : len(v)-1]), true
	}
	// Escapes, or invalid UTF-8 (which encoding/json replaces by U+FFFD).
	var s string
	return s, json.Unmarshal(v, &s) == nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	t, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := t.(json.Delim); !ok || d != want {
		return &decodeError{fmt.Sprintf("want %q, found %v", want, tokenString(t))}
	}
	return nil
}

func tokenString(t json.Token) string {
	switch v := t.(type) {
	case nil:
		return "null"
	case json.Delim:
		return fmt.Sprintf("%q", string(v))
	case string:
		return fmt.Sprintf("string %q", truncate(v, 40))
	default:
		return fmt.Sprintf("%v", v)
	}
}

// pageError turns a decoding failure into a message with the URL (no query)
// and the byte offset, and marks network-looking failures as transient so
// that get retries the GET (a delta page GET is idempotent).
func (c *Client) pageError(u *url.URL, dec *json.Decoder, body *limitReader, err error) error {
	offset := dec.InputOffset()
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.Is(err, errPageTooLarge):
		return fmt.Errorf("Graph page from %s is larger than the limit of %d bytes (MaxPageBytes)", redact(u), c.maxPageBytes)
	case errors.As(err, &se):
		return fmt.Errorf("malformed Graph page from %s at byte %d: %v", redact(u), syntaxOffset(dec, se), se)
	case errors.As(err, &te):
		// The value starting at offset has a property of the wrong JSON type.
		return fmt.Errorf("malformed Graph page from %s in the value at byte %d: %v", redact(u), offset, te)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		// A body cut short: Graph never sends half a page on purpose.
		return errTransient{fmt.Errorf("Graph page from %s ends early at byte %d (truncated body)", redact(u), body.read)}
	case isDecodeError(err):
		return fmt.Errorf("malformed Graph page from %s at byte %d: %v", redact(u), offset, err)
	default:
		return errTransient{fmt.Errorf("read Graph page from %s at byte %d: %w", redact(u), body.read, err)}
	}
}

// syntaxOffset returns the 0-based offset of the byte that broke the page.
// json.Decoder's SyntaxError.Offset is not an offset in the stream for
// errors inside Decode (it counts from an internal scan state), but the
// decoder does not consume a value that failed: its buffered bytes start at
// InputOffset, so re-checking them with Unmarshal (whose Offset is "bytes
// read, including the bad one") locates the byte exactly.
func syntaxOffset(dec *json.Decoder, se *json.SyntaxError) int64 {
	rest, _ := io.ReadAll(dec.Buffered())
	var v json.RawMessage
	var se2 *json.SyntaxError
	if errors.As(json.Unmarshal(rest, &v), &se2) && se2.Offset > 0 {
		return dec.InputOffset() + se2.Offset - 1
	}
	return se.Offset
}

// decodeError marks our own shape checks (wrong token, missing id) so that
// pageError does not take them for network failures.
type decodeError struct{ msg string }

func (e *decodeError) Error() string { return e.msg }

func isDecodeError(err error) bool {
	var de *decodeError
	return errors.As(err, &de)
}

// rawItem is the part of a listItem we read. Other properties (createdBy,
// parentReference, contentType, webUrl) are skipped by the decoder.
type rawItem struct {
	ID           json.RawMessage `json:"id"`
	ETag         string          `json:"eTag"`
	ODataETag    string          `json:"@odata.etag"`
	LastModified string          `json:"lastModifiedDateTime"`
	Deleted      json.RawMessage `json:"deleted"`
	Removed      json.RawMessage `json:"@removed"`
	Fields       json.RawMessage `json:"fields"`
}

func present(raw json.RawMessage) bool {
	return len(raw) > 0 && !bytes.Equal(raw, []byte("null"))
}

func (ri *rawItem) item() (Item, error) {
	id, err := itemID(ri.ID)
	if err != nil {
		return Item{}, err
	}
	it := Item{
		ID:       id,
		Deleted:  present(ri.Deleted) || present(ri.Removed),
		ETag:     cmpOr(ri.ETag, ri.ODataETag),
		Modified: ri.LastModified,
	}
	if it.Deleted {
		return it, nil // a tombstone's fields, if any, are not a state to keep
	}
	var modified string
	it.Fields, modified, err = cleanFields(ri.Fields, it.Modified == "")
	if err != nil {
		return Item{}, fmt.Errorf("item %s: %w", id, err)
	}
	it.Modified = cmpOr(it.Modified, modified)
	return it, nil
}

// itemID reads the listItem id: a string in Graph ("17"); a number is
// accepted too, as the same digits.
func itemID(raw json.RawMessage) (string, error) {
	if !present(raw) {
		return "", &decodeError{"item has no id"}
	}
	var id string
	switch raw[0] {
	case '"':
		if err := json.Unmarshal(raw, &id); err != nil {
			return "", err
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		id = string(raw)
	default:
		return "", &decodeError{"item id is not a string: " + truncate(string(raw), 40)}
	}
	if id == "" {
		return "", &decodeError{"item has an empty id"}
	}
	return id, nil
}

// cleanFields removes OData annotations from a fields object (DESIGN §3.3:
// "without OData annotations (@odata.etag, Name@odata.type)") and returns
// fields.Modified when needModified (a fallback for a missing
// lastModifiedDateTime). Values are copied
// byte for byte (only insignificant whitespace is dropped).
func cleanFields(raw json.RawMessage, needModified bool) (json.RawMessage, string, error) {
	if !present(raw) {
		return nil, "", nil
	}
	// One pass over bytes that encoding/json has already validated (the page
	// decoder read them into a RawMessage): copy every member whose key is
	// not an annotation, verbatim.
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, "", &decodeError{"fields is not an object"}
	}
	out := make([]byte, 0, len(raw))
	out = append(out, '{')
	var modified string
	n := 0
	for i++; ; {
		i = skipSpace(raw, i)
		if i >= len(raw) {
			return nil, "", &decodeError{"fields object is not closed"}
		}
		if raw[i] == '}' {
			break
		}
		if raw[i] == ',' {
			i++
			continue
		}
		keyStart := i
		i = skipValue(raw, i)
		key := raw[keyStart:i]
		i = skipSpace(raw, i)
		if i >= len(raw) || raw[i] != ':' {
			return nil, "", &decodeError{"fields object is malformed"}
		}
		i = skipSpace(raw, i+1)
		valStart := i
		i = skipValue(raw, i)
		val := raw[valStart:i]
		if annotation(key) {
			continue
		}
		if n > 0 {
			out = append(out, ',')
		}
		n++
		out = append(out, key...)
		out = append(out, ':')
		if hasSpace(val) {
			var b bytes.Buffer
			if err := json.Compact(&b, val); err != nil {
				return nil, "", err
			}
			out = append(out, b.Bytes()...)
		} else {
			out = append(out, val...)
		}
		if needModified && string(key) == `"Modified"` {
			modified = stringValue(val)
		}
	}
	out = append(out, '}')
	return out, modified, nil
}

// annotation reports whether a (quoted) key is an OData annotation such as
// "@odata.etag" or "Name@odata.type".
func annotation(key []byte) bool {
	if bytes.IndexByte(key, '\\') < 0 {
		return bytes.IndexByte(key, '@') >= 0
	}
	var k string
	return json.Unmarshal(key, &k) != nil || strings.Contains(k, "@")
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipValue returns the index after the JSON value starting at b[i]. b is
// known to be valid JSON.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return i
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); {
			k := bytes.IndexByte(b[j:], '"')
			if k < 0 {
				return len(b)
			}
			q := j + k
			// The quote ends the string unless an odd run of backslashes
			// escapes it.
			bs := 0
			for q-1-bs > i && b[q-1-bs] == '\\' {
				bs++
			}
			if bs%2 == 0 {
				return q + 1
			}
			j = q + 1
		}
		return len(b)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipValue(b, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(b)
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
			j++
		}
		return j
	}
}

// hasSpace reports whether a valid JSON value has whitespace outside its
// strings (then it is compacted; Graph sends compact JSON).
func hasSpace(v []byte) bool {
	if len(v) == 0 || (v[0] != '{' && v[0] != '[') {
		return false
	}
	for j := 0; j < len(v); j++ {
		switch v[j] {
		case '"':
			j = skipValue(v, j) - 1
		case ' ', '\t', '\n', '\r':
			return true
		}
	}
	return false
}

func stringValue(raw json.RawMessage) string {
	var s string
	if len(raw) > 0 && raw[0] == '"' && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// Records turns the page into change records for the log (DESIGN §3.3,
// §4 Read): the deleted facet or @removed becomes a delete without fields,
// anything else an upsert. An item seen more than once keeps only its last
// occurrence, at that position (reference §1.1: "use the last occurrence").
// Seq and TS are left zero: the log assigns them.
func (p *Page) Records(site, list string) []changelog.Record {
	last := make(map[string]int, len(p.Items))
	for i, it := range p.Items {
		last[it.ID] = i
	}
	out := make([]changelog.Record, 0, len(last))
	for i, it := range p.Items {
		if last[it.ID] != i {
			continue
		}
		r := changelog.Record{
			Op:     changelog.OpUpsert,
			Key:    it.ID,
			Source: changelog.Source{Site: site, List: list, ETag: it.ETag, Modified: it.Modified},
			Fields: it.Fields,
		}
		if it.Deleted {
			r.Op, r.Fields = changelog.OpDelete, nil
		}
		out = append(out, r)
	}
	return out
}
