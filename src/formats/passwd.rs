//! User and group databases (`/etc/passwd`, `/etc/group`, `getent`): the
//! relay's users (vmail, opendkim, postfix, ...) exist in the container, not
//! on the host, and their ids may differ between hosts; a backup records
//! the names the container gives its ids.

use std::collections::BTreeMap;

/// Names and ids of one user or group database (`getent passwd` / `group`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    by_id: BTreeMap<u32, String>,
    by_name: BTreeMap<String, u32>,
}

impl Names {
    /// Parse `/etc/passwd` or `/etc/group` lines (`name:x:id:...`); lines
    /// that do not fit are skipped. The first name of an id wins.
    pub fn parse(text: &str) -> Names {
        let mut n = Names::default();
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(_), Some(id)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(id) = id.trim().parse::<u32>() else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            n.by_id.entry(id).or_insert_with(|| name.to_string());
            n.by_name.entry(name.to_string()).or_insert(id);
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    pub fn id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd() {
        let n = Names::parse(
            "root:x:0:0:root:/root:/bin/sh\nvmail:x:998:998::/home/vmail:/bin/false\nbroken\n",
        );
        assert_eq!(n.name(998), Some("vmail"));
        assert_eq!(n.id("root"), Some(0));
        assert_eq!(n.id("opendkim"), None);
    }
}
