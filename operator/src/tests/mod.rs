//! Tests that cross modules: the CRD and its generated files, the examples against the CRD's
//! schema, the children built from a job, and the controller against a scripted API server.

mod autoscale;
mod cel;
mod conditions;
mod controller;
mod crd;
mod desired;
mod drain;
mod failures;
mod kafka;
mod kafka_time;
mod kubectl;
mod lag;
mod leader;
mod observed;
mod progress;
mod prometheus;
mod rescale;
mod restarts;
mod rewind;
mod scale;
mod security;
mod stalls;
mod suspend;
mod tansu;
mod wc;
