package store

// SetRewindFrames shortens the WAL length that makes the checkpointer rewind
// it, and returns a function that restores it.
func SetRewindFrames(n int) func() {
	old := rewindFrames
	rewindFrames = n
	return func() { rewindFrames = old }
}

// MigrateTo makes Open stop at schema version v, and returns a function
// that restores it.
func MigrateTo(v int) func() {
	old := migrateTo
	migrateTo = v
	return func() { migrateTo = old }
}
