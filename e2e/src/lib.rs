//! Support for the end-to-end tests and scripts: a throwaway PostgreSQL server ([`pg`]).

pub mod pg;
