package main

import (
	"database/sql"

	_ "github.com/jackc/pgx/v5/stdlib"
)

func openPG(url string) (*sql.DB, error) { return sql.Open("pgx", url) }
