// Command democheck compares the demo's SQLite table with the simulator's
// list (its /_sim/snapshot JSON on stdin): same ids, same Title and Status.
// scripts/demo runs it at the end of a timed demo.
package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"

	_ "modernc.org/sqlite"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: democheck orders.db < snapshot.json")
		os.Exit(2)
	}
	if err := check(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "democheck:", err)
		os.Exit(1)
	}
}

func check(path string) error {
	var doc struct {
		Items map[string]map[string]any `json:"items"`
	}
	if err := json.NewDecoder(os.Stdin).Decode(&doc); err != nil {
		return fmt.Errorf("read the snapshot: %w", err)
	}
	snap := doc.Items
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.Query(`SELECT id, "Title" FROM orders`)
	if err != nil {
		return fmt.Errorf("read the table: %w", err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var id string
		var title sql.NullString
		if err := rows.Scan(&id, &title); err != nil {
			return err
		}
		got[id] = title.String
	}
	if err := rows.Err(); err != nil {
		return err
	}
	problems := 0
	for id, fields := range snap {
		title, _ := fields["Title"].(string)
		if t, ok := got[id]; !ok {
			fmt.Printf("item %s is in the list but not in the table\n", id)
			problems++
		} else if t != title {
			fmt.Printf("item %s: table has Title %q, the list %q\n", id, t, title)
			problems++
		}
	}
	for id := range got {
		if _, ok := snap[id]; !ok {
			fmt.Printf("item %s is in the table but no longer in the list\n", id)
			problems++
		}
	}
	fmt.Printf("list: %d items, table: %d rows, %d differences\n", len(snap), len(got), problems)
	if problems > 0 {
		return fmt.Errorf("%d differences", problems)
	}
	return nil
}
