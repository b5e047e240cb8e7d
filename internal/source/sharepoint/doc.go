// Package sharepoint owns the Microsoft Graph list-item delta client: auth,
// site and list resolution, one-page-at-a-time reads of
// /sites/{site}/lists/{list}/items/delta, throttling, and the 410 resync
// signal (reference/sharepoint-graph-delta.md §1, §3, §4).
//
// It must never rebuild or edit a nextLink/deltaLink (they are opaque, §1.7),
// never follow a link or Location to a host other than the configured Graph
// host (the request would carry the bearer token there), and never log a
// token or put one in an error. It does not decide what to do with pages:
// the engine drives it page by page and commits cursors (DESIGN §4 Read).
package sharepoint
