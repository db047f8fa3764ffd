//! Support for the end-to-end tests and scripts: a throwaway PostgreSQL server ([`pg`]) and
//! the kill test harness behind `e2e/chaos.sh` ([`chaos`]).

pub mod chaos;
pub mod pg;
