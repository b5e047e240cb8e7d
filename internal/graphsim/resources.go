package graphsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
)

// serveSite serves everything under one site: the site resource, its lists,
// one list, list-item delta and single items.
func (s *Sim) serveSite(w http.ResponseWriter, r *http.Request, rt route) {
	st, sub := rt.site, rt.sub
	if len(sub) == 0 {
		s.writeJSON(w, s.siteJSON(r, st))
		return
	}
	if sub[0] != "lists" {
		s.writeError(w, r, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+sub[0]+"'.", nil)
		return
	}
	if len(sub) == 1 {
		s.serveLists(w, r, st)
		return
	}
	s.mu.Lock()
	l := st.list(sub[1])
	s.mu.Unlock()
	if l == nil {
		s.writeError(w, r, http.StatusNotFound, "itemNotFound", "List '"+sub[1]+"' does not exist at site with URL '"+st.webURL()+"'.", nil)
		return
	}
	switch {
	case len(sub) == 2:
		s.writeJSON(w, s.listJSON(r, l, true))
	case len(sub) == 4 && sub[2] == "items" && sub[3] == "delta":
		s.serveDelta(w, r, rt, l)
	case len(sub) == 4 && sub[2] == "items":
		s.serveItem(w, r, l, sub[3])
	default:
		s.writeError(w, r, http.StatusBadRequest, "BadRequest", "Resource not found for the segment '"+sub[len(sub)-1]+"'.", nil)
	}
}

func (s *Sim) siteJSON(r *http.Request, st *site) map[string]any {
	name := st.path[strings.LastIndexByte(st.path, '/')+1:]
	m := map[string]any{
		"@odata.context":       baseURL(r) + "/$metadata#sites/$entity",
		"createdDateTime":      st.created.UTC().Format(timeLayout),
		"description":          "",
		"id":                   st.id,
		"lastModifiedDateTime": s.now().UTC().Format(timeLayout),
		"name":                 name,
		"webUrl":               st.webURL(),
		"displayName":          name,
		"siteCollection":       map[string]any{"hostname": st.hostname},
	}
	if st.path == "" {
		m["root"] = map[string]any{}
	}
	return m
}

func (s *Sim) listJSON(r *http.Request, l *List, context bool) map[string]any {
	l.mu.RLock()
	seq := l.seq
	l.mu.RUnlock()
	etag := `"` + l.id + `,` + strconv.FormatUint(seq+1, 10) + `"`
	m := map[string]any{
		"@odata.etag":          etag,
		"createdDateTime":      l.site.created.UTC().Format(timeLayout),
		"description":          "",
		"eTag":                 etag,
		"id":                   l.id,
		"lastModifiedDateTime": s.now().UTC().Format(timeLayout),
		"name":                 l.urlName,
		"webUrl":               l.site.webURL() + "/Lists/" + l.urlName,
		"displayName":          l.name,
		"createdBy":            map[string]any{"user": map[string]any{"displayName": users[0].name, "email": users[0].email}},
		"parentReference":      map[string]any{"siteId": l.site.id},
		"list":                 map[string]any{"contentTypesEnabled": false, "hidden": false, "template": "genericList"},
	}
	if context {
		m["@odata.context"] = baseURL(r) + "/$metadata#sites('" + l.site.id + "')/lists/$entity"
	}
	return m
}

// serveLists serves GET /sites/{site}/lists, with the $filter a client needs
// to resolve a display name: displayName eq '...' (or name eq '...').
func (s *Sim) serveLists(w http.ResponseWriter, r *http.Request, st *site) {
	q := r.URL.Query()
	var field, want string
	if f := q.Get("$filter"); f != "" {
		var ok bool
		field, want, ok = parseEqFilter(f)
		if !ok || (field != "displayName" && field != "name") {
			s.writeError(w, r, http.StatusBadRequest, "invalidRequest", "Invalid filter clause: "+f, nil)
			return
		}
	}
	s.mu.Lock()
	lists := append([]*List(nil), st.lists...)
	s.mu.Unlock()
	value := []map[string]any{}
	for _, l := range lists {
		m := s.listJSON(r, l, false)
		if field != "" && m[field] != want {
			continue
		}
		if sel := q.Get("$select"); sel != "" {
			keep := map[string]bool{"@odata.etag": true}
			for _, k := range strings.Split(sel, ",") {
				keep[strings.TrimSpace(k)] = true
			}
			for k := range m {
				if !keep[k] {
					delete(m, k)
				}
			}
		}
		value = append(value, m)
	}
	s.writeJSON(w, map[string]any{
		"@odata.context": baseURL(r) + "/$metadata#sites('" + st.id + "')/lists",
		"value":          value,
	})
}

// parseEqFilter parses "name eq 'value'" (with ” as an escaped quote).
func parseEqFilter(f string) (field, value string, ok bool) {
	field, rest, ok := strings.Cut(strings.TrimSpace(f), " eq ")
	if !ok {
		return "", "", false
	}
	rest = strings.TrimSpace(rest)
	if len(rest) < 2 || rest[0] != '\'' || rest[len(rest)-1] != '\'' {
		return "", "", false
	}
	return strings.TrimSpace(field), strings.ReplaceAll(rest[1:len(rest)-1], "''", "'"), true
}

// serveItem serves GET .../items/{id}: a live item, with lastModifiedBy,
// which delta does not return (§1.1).
func (s *Sim) serveItem(w http.ResponseWriter, r *http.Request, l *List, idStr string) {
	q, qerr := s.parseDeltaQuery(r.URL.RawQuery)
	if qerr != nil {
		s.writeError(w, r, qerr.status, qerr.code, qerr.msg, nil)
		return
	}
	id, err := strconv.Atoi(idStr)
	l.mu.RLock()
	if err != nil || id <= 0 || id >= len(l.items) || l.items[id].state != stateLive {
		l.mu.RUnlock()
		s.writeError(w, r, http.StatusNotFound, "itemNotFound", "The specified list item was not found.", nil)
		return
	}
	b := l.appendItemLocked(nil, id, q, Knobs{}, false)
	editor := users[int(l.items[id].cur.gen%uint64(len(users)))]
	l.mu.RUnlock()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	m["@odata.context"] = baseURL(r) + "/$metadata#sites('" + l.site.id + "')/lists('" + l.id + "')/items/$entity"
	m["lastModifiedBy"] = map[string]any{"user": map[string]any{"displayName": editor.name, "email": editor.email, "id": editor.aadID}}
	s.writeJSON(w, m)
}

func (s *Sim) writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	w.Header().Set("Content-Type", "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}
