//! What a Redis server ran, from `INFO commandstats`: tests that bound the work a script
//! does (commands run inside a script are counted there too) read it through one parser.

use std::collections::BTreeMap;

/// Calls per command since the server started or the last `CONFIG RESETSTAT`, by the
/// lower-case names `INFO commandstats` uses (`evalsha`, `get`, `zrangebyscore`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandCalls(BTreeMap<String, u64>);

impl CommandCalls {
    /// Reads the server's `INFO commandstats`.
    pub async fn read(conn: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<Self> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await?;
        Ok(Self::parse(&info))
    }

    /// Parses the text of `INFO commandstats` (`cmdstat_get:calls=3,usec=…` lines; other
    /// lines are skipped).
    pub fn parse(info: &str) -> Self {
        let calls = info
            .lines()
            .filter_map(|line| {
                let (name, stats) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats
                    .split(',')
                    .find_map(|field| field.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), calls))
            })
            .collect();
        Self(calls)
    }

    /// Calls of `command` (0 when it never ran).
    pub fn of(&self, command: &str) -> u64 {
        self.0.get(command).copied().unwrap_or(0)
    }

    /// Calls of every command in `commands`, summed.
    pub fn total_of<'c>(&self, commands: impl IntoIterator<Item = &'c str>) -> u64 {
        commands.into_iter().map(|c| self.of(c)).sum()
    }

    /// Every command that ran, with its calls.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(name, &calls)| (name.as_str(), calls))
    }
}

#[cfg(test)]
mod tests {
    use super::CommandCalls;

    #[test]
    fn parses_the_calls_of_each_command() {
        let info = "# Commandstats\r\n\
            cmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=1\r\n\
            cmdstat_get:calls=7,usec=3,usec_per_call=0.43,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_broken:usec=3\r\n";
        let calls = CommandCalls::parse(info);
        assert_eq!(calls.of("evalsha"), 12);
        assert_eq!(calls.of("get"), 7);
        assert_eq!(calls.of("set"), 0);
        assert_eq!(calls.total_of(["evalsha", "eval", "get"]), 19);
        assert_eq!(
            calls.iter().collect::<Vec<_>>(),
            [("evalsha", 12), ("get", 7)]
        );
    }
}
