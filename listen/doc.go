// Package listen keeps one dedicated Postgres connection listening on a
// fixed set of channels and turns what arrives into a stream of Events.
//
// A tour:
//
//   - New validates a Config: a Connect function that returns a dedicated
//     *pgx.Conn (never a pooled one), the channels, and optional buffer,
//     ping and backoff settings.
//   - Listener.Run blocks until its context ends. It connects, runs a quoted
//     LISTEN for every channel, and waits for notifications. A connection
//     that stays silent for PingInterval is checked with "select 1". Any
//     error closes the connection, and Run reconnects with jittered
//     exponential backoff. Only Run's goroutine touches the connection.
//   - Every successful connect emits a Resync Event with a new Generation
//     before that connection's first notification, because notifications
//     sent while no session listened are lost. Consumers react to a
//     Resync by reading what they missed from the database.
//   - Run never waits for the consumer. When the Events buffer is full,
//     notifications are dropped and counted, and a Resync is delivered
//     before the next notification that fits.
//   - Listener.Ready closes after the first connect. Listener.Status reports
//     the current state, the last error with passwords masked, and counters.
package listen
