//! Integration tests: one binary, one module per area.
mod api;
mod api_crash;
mod common;
mod control;
mod crash;
mod disconnect;
mod export;
mod flight;
mod ingest;
mod installation;
mod lake;
mod repl;
mod schema_gen;
mod search;
mod sql_dialect;
mod sql_examples;
