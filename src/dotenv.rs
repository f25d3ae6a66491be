//! .env reading, Compose-exact quoting and merging.
