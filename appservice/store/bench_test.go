package store_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/matrix-hipaa/matrix-hipaa/appservice/store"
	"github.com/matrix-hipaa/matrix-hipaa/appservice/store/storetest"
)

// BenchmarkEmptyDurableCommit is the floor under every acknowledged
// transaction: one tiny write committed with synchronous=FULL.
func BenchmarkEmptyDurableCommit(b *testing.B) {
	for _, d := range []struct {
		name string
		d    store.Durability
	}{{"durable", store.Durable}, {"deferred", store.Deferred}} {
		b.Run(d.name, func(b *testing.B) {
			db, _ := storetest.Open(b, "sqlite3")
			ctx := context.Background()
			for i := 0; i < b.N; i++ {
				err := db.Tx(ctx, d.d, func(tx *sql.Tx) error {
					_, err := db.Exec(ctx, tx, `UPDATE dispatch_cursor SET seq = $1 WHERE id = 1`, i)
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
