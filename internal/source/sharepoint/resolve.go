package sharepoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
)

// Resolve turns the pipelines file's site and list (DESIGN §3.2) into the
// Graph ids the delta URL needs.
//
// site is a Graph site id ("host,siteGuid,webGuid", or a bare hostname for
// the root site) or "hostname:/server-relative-path", read with
// GET /sites/{hostname}:/{path}. list is a list id (GUID) or its display
// name. Names are matched against GET /sites/{id}/lists rather than put in
// a $filter, so names with quotes, spaces or non-ASCII letters need no
// OData escaping; an exact match wins over a case-insensitive one, and the
// list's URL name is tried last.
func (c *Client) Resolve(ctx context.Context, site, list string) (siteID, listID string, err error) {
	site, list = strings.TrimSpace(site), strings.TrimSpace(list)
	if site == "" || list == "" {
		return "", "", errors.New("resolve: site and list are required")
	}
	siteID, err = c.resolveSite(ctx, site)
	if err != nil {
		return "", "", err
	}
	listID, err = c.resolveList(ctx, site, siteID, list)
	if err != nil {
		return "", "", err
	}
	return siteID, listID, nil
}

func (c *Client) resolveSite(ctx context.Context, site string) (string, error) {
	var link string
	if host, path, ok := strings.Cut(site, ":/"); ok {
		link = c.graphURL + "/sites/" + escapeSegment(host) + ":/" + escapePath(strings.Trim(path, "/"))
	} else {
		link = c.graphURL + "/sites/" + escapeSegment(site)
	}
	var s struct {
		ID string `json:"id"`
	}
	if err := c.getJSON(ctx, link, request{subject: "site " + site}, &s); err != nil {
		var se *StatusError
		if errors.As(err, &se) && se.StatusCode == http.StatusNotFound {
			return "", fmt.Errorf("site %q not found: check the hostname and server-relative path (contoso.sharepoint.com:/sites/legal) or the site id: %w", site, err)
		}
		return "", fmt.Errorf("resolve site %q: %w", site, err)
	}
	if s.ID == "" {
		return "", fmt.Errorf("resolve site %q: Graph answered without a site id", site)
	}
	return s.ID, nil
}

type listInfo struct {
	ID          string `json:"id"`
	DisplayName string `json:"displayName"`
	Name        string `json:"name"`
}

var guidRE = regexp.MustCompile(`^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$`)

func (c *Client) resolveList(ctx context.Context, site, siteID, list string) (string, error) {
	subject := "site " + site + ", list " + list
	if guidRE.MatchString(list) {
		// GET /sites/{site-id}/lists/{list-id}: one cheap request, and a
		// clear 404 when the id is wrong.
		id := strings.Trim(list, "{}")
		var l listInfo
		r := request{subject: subject}
		err := c.getJSON(ctx, c.graphURL+"/sites/"+escapeSegment(siteID)+"/lists/"+escapeSegment(id), r, &l)
		var se *StatusError
		if err == nil && l.ID != "" {
			return l.ID, nil
		}
		if err != nil && (!errors.As(err, &se) || se.StatusCode != http.StatusNotFound) {
			return "", fmt.Errorf("resolve list %q: %w", list, err)
		}
		// 404: perhaps a list whose display name looks like a GUID; look by name.
	}

	var all []listInfo
	link := c.graphURL + "/sites/" + escapeSegment(siteID) + "/lists"
	for pages := 0; link != ""; pages++ {
		if pages == 100 {
			return "", fmt.Errorf("resolve list %q: more than 100 pages of lists in site %q", list, site)
		}
		var pg struct {
			Value    []listInfo `json:"value"`
			NextLink string     `json:"@odata.nextLink"`
		}
		if err := c.getJSON(ctx, link, request{subject: "site " + site}, &pg); err != nil {
			return "", fmt.Errorf("resolve list %q: %w", list, err)
		}
		all = append(all, pg.Value...)
		link = pg.NextLink
	}
	for _, match := range []func(l listInfo) bool{
		func(l listInfo) bool { return strings.EqualFold(l.ID, strings.Trim(list, "{}")) },
		func(l listInfo) bool { return l.DisplayName == list },
		func(l listInfo) bool { return strings.EqualFold(l.DisplayName, list) },
		func(l listInfo) bool { return strings.EqualFold(l.Name, list) },
	} {
		var found []listInfo
		for _, l := range all {
			if match(l) {
				found = append(found, l)
			}
		}
		switch len(found) {
		case 0:
			continue
		case 1:
			return found[0].ID, nil
		default:
			ids := make([]string, len(found))
			for i, l := range found {
				ids[i] = l.ID
			}
			return "", fmt.Errorf("resolve list %q: %d lists in site %q match (%s); use the list id", list, len(found), site, strings.Join(ids, ", "))
		}
	}
	names := make([]string, 0, len(all))
	for _, l := range all {
		if len(names) == 20 {
			names = append(names, "…")
			break
		}
		names = append(names, fmt.Sprintf("%q", l.DisplayName))
	}
	if len(names) == 0 {
		names = append(names, "none visible to the app")
	}
	return "", fmt.Errorf("list %q not found in site %q (lists: %s)", list, site, strings.Join(names, ", "))
}

// escapePath escapes each segment of a server-relative path, keeping "/".
func escapePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = escapeSegment(s)
	}
	return strings.Join(segs, "/")
}

// getJSON GETs a small Graph resource (site, list, list collection) into v.
func (c *Client) getJSON(ctx context.Context, link string, r request, v any) error {
	u, err := c.checkLink(link)
	if err != nil {
		return err
	}
	r.url = u
	return c.get(ctx, r, func(resp *http.Response) error {
		data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		if err != nil {
			return errTransient{fmt.Errorf("read %s: %w", redact(u), err)}
		}
		if err := json.Unmarshal(data, v); err != nil {
			return fmt.Errorf("malformed answer from %s: %w", redact(u), err)
		}
		return nil
	})
}
