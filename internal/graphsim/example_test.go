package graphsim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/sluicehq/sluice/internal/graphsim"
)

// A test serves a list, reads one delta round, and compares its fold with
// Snapshot.
func Example() {
	sim := graphsim.New(graphsim.Options{Token: "t"})
	orders := sim.AddList("contoso.sharepoint.com", "/sites/ops", "Orders")
	orders.Populate(3, 1)
	orders.SetKnobs(graphsim.Knobs{DuplicateRate: 1}) // every item twice, older first
	srv := httptest.NewServer(sim)
	defer srv.Close()

	link := srv.URL + "/v1.0/sites/contoso.sharepoint.com:/sites/ops:/lists/Orders/items/delta?$expand=fields($select=Title)"
	folded := map[string]any{}
	for link != "" {
		req, _ := http.NewRequest("GET", link, nil)
		req.Header.Set("Authorization", "Bearer t")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			panic(err)
		}
		var page struct {
			Next  string `json:"@odata.nextLink"`
			Value []struct {
				ID     string            `json:"id"`
				Fields map[string]string `json:"fields"`
			} `json:"value"`
		}
		json.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		for _, it := range page.Value {
			folded[it.ID] = it.Fields["Title"]
		}
		link = page.Next // the deltaLink page has none
	}
	fmt.Println(len(folded), folded["1"], orders.Snapshot()["1"]["Title"])
	// Output: 3 PO-1001 PO-1001
}
