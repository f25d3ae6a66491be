//! The timings a bench collects for one thing it measures. Each bench adds
//! the statistics it reports.

use std::time::Duration;

pub struct Series {
    pub name: &'static str,
    pub samples: Vec<Duration>,
}

impl Series {
    pub fn new(name: &'static str) -> Series {
        Series {
            name,
            samples: Vec::new(),
        }
    }
}
