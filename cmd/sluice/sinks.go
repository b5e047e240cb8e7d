package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/sluicehq/sluice/internal/config"
	"github.com/sluicehq/sluice/internal/sink"
	"github.com/sluicehq/sluice/internal/sink/httpsink"
	"github.com/sluicehq/sluice/internal/sink/servicebus"
	"github.com/sluicehq/sluice/internal/sink/sqlsink"
)

// sinkOpener wires each destination type to its sink package; the engine
// only sees the sink.Sink interface.
func sinkOpener(log *slog.Logger) func(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error) {
	return func(ctx context.Context, p *config.Pipeline, d *config.Destination) (sink.Sink, error) {
		switch d.Type {
		case config.DestSQL:
			return sqlsink.Open(ctx, sqlsink.Config{
				Driver: d.Driver, DSN: d.DSN.Reveal(), Table: d.Table, Deletes: d.Deletes,
				Pipeline: p.Name, Destination: d.Name, Logger: log.With("pipeline", p.Name),
			})
		case config.DestServiceBus:
			return servicebus.Open(ctx, servicebus.Config{
				ConnectionString: d.ConnectionString.Reveal(), Namespace: d.Namespace, Entity: d.Entity,
				SessionKey: d.SessionKey, BatchSize: d.BatchSize,
			})
		case config.DestHTTP:
			return httpsink.Open(httpsink.Config{
				URL: d.URL, BatchSize: d.BatchSize, Timeout: d.Timeout, MaxInFlight: d.MaxInFlight,
				Secret: d.Secret.Reveal(), Headers: d.Headers, Version: version,
				Logger: log.With("pipeline", p.Name, "destination", d.Name),
			})
		default:
			return nil, fmt.Errorf("unknown destination type %q (sql, servicebus or http)", d.Type)
		}
	}
}
