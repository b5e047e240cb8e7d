package main

import (
	"log/slog"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/engine"
	"github.com/sluicehq/sluice/internal/source/sharepoint"
)

// sourceOpener wires a pipeline's source to the Graph client.
func sourceOpener(log *slog.Logger) engine.SourceOpener {
	return func(p *config.Pipeline) (engine.Source, error) {
		return sharepoint.New(sharepoint.Options{GraphURL: p.Source.GraphURL, Auth: p.Source.Auth, Version: version,
			Logger: log.With("pipeline", p.Name)})
	}
}
