//! Playbooks
pub mod yaml;
