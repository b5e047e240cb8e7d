package sqlsink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// member is one top-level field of a record's Fields object. Both slices
// point into the record's own buffer: decoding allocates nothing per field
// unless a name carries escapes.
type member struct {
	name []byte // unescaped field name
	raw  []byte // the JSON value exactly as in the log
}

// scanObject appends the members of the JSON object b to dst. It walks the
// bytes once instead of unmarshalling into a map: a batch of 5,000 records
// would otherwise allocate a map, its keys and a copy of every value.
func scanObject(dst []member, b []byte) ([]member, error) {
	i := skipWS(b, 0)
	if i == len(b) {
		return dst, nil // no fields at all: an upsert of an empty item
	}
	if b[i] == 'n' && bytes.Equal(b[i:], []byte("null")) {
		return dst, nil
	}
	if b[i] != '{' {
		return dst, errors.New("fields is not a JSON object")
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return dst, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return dst, errors.New("fields: expected a member name")
		}
		end, err := skipString(b, i)
		if err != nil {
			return dst, err
		}
		name := b[i+1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 {
			var s string
			if err := json.Unmarshal(b[i:end], &s); err != nil {
				return dst, fmt.Errorf("fields: bad member name: %w", err)
			}
			name = []byte(s)
		}
		i = skipWS(b, end)
		if i >= len(b) || b[i] != ':' {
			return dst, errors.New("fields: expected ':'")
		}
		i = skipWS(b, i+1)
		vend, err := skipValue(b, i)
		if err != nil {
			return dst, fmt.Errorf("fields: member %q: %w", name, err)
		}
		dst = append(dst, member{name: name, raw: b[i:vend]})
		i = skipWS(b, vend)
		if i >= len(b) {
			return dst, errors.New("fields: unterminated object")
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return dst, nil
		default:
			return dst, errors.New("fields: expected ',' or '}'")
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i] == '"'.
func skipString(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, errors.New("unterminated string")
}

// skipValue returns the index just past the JSON value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errors.New("missing value")
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, err := skipString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errors.New("unterminated array or object")
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' &&
			b[j] != '\n' && b[j] != '\t' && b[j] != '\r' {
			j++
		}
		if j == i {
			return 0, errors.New("missing value")
		}
		return j, nil
	}
}

// kind is the storage class of a column, derived from JSON value types.
type kind uint8

const (
	kindNone   kind = iota // null: says nothing about the column's type
	kindText               // strings (and anything, as text)
	kindNumber             // JSON numbers
	kindBool               // true/false
	kindJSON               // arrays and objects
)

func (k kind) String() string {
	switch k {
	case kindText:
		return "text"
	case kindNumber:
		return "number"
	case kindBool:
		return "boolean"
	case kindJSON:
		return "JSON"
	}
	return "null"
}

// kindOfRaw classifies a raw JSON value by its first byte.
func kindOfRaw(raw []byte) kind {
	switch raw[0] {
	case '"':
		return kindText
	case 't', 'f':
		return kindBool
	case 'n':
		return kindNone
	case '[', '{':
		return kindJSON
	}
	return kindNumber
}

// valueFor converts raw to the Go value stored in a column of kind k:
// string, float64, bool or nil. A value that cannot live in the column (a
// string in a number column) is an error that rejects just its record.
func valueFor(raw []byte, k kind) (any, error) {
	vk := kindOfRaw(raw)
	switch vk {
	case kindNone:
		if !bytes.Equal(raw, []byte("null")) {
			return nil, fmt.Errorf("invalid JSON literal %.20q", raw)
		}
		return nil, nil
	case kindBool:
		var v bool
		switch {
		case bytes.Equal(raw, []byte("true")):
			v = true
		case bytes.Equal(raw, []byte("false")):
		default:
			return nil, fmt.Errorf("invalid JSON literal %.20q", raw)
		}
		switch k {
		case kindBool:
			return v, nil
		case kindText, kindJSON:
			return string(raw), nil
		}
	case kindNumber:
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil {
			return nil, fmt.Errorf("invalid JSON number %.40q", raw)
		}
		switch k {
		case kindNumber:
			return f, nil
		case kindText, kindJSON:
			return string(raw), nil
		}
	case kindText:
		if k == kindJSON {
			return string(raw), nil
		}
		if k != kindText {
			break
		}
		s := raw[1 : len(raw)-1]
		if bytes.IndexByte(s, '\\') < 0 {
			if !utf8.Valid(s) {
				return nil, errors.New("string is not valid UTF-8")
			}
			return string(s), nil
		}
		var v string
		if err := json.Unmarshal(raw, &v); err != nil {
			return nil, fmt.Errorf("invalid JSON string: %w", err)
		}
		return v, nil
	case kindJSON:
		if k == kindText || k == kindJSON {
			if !json.Valid(raw) {
				return nil, errors.New("invalid JSON array or object")
			}
			return string(raw), nil
		}
	}
	return nil, fmt.Errorf("a %s value cannot be stored in a %s column", vk, k)
}
