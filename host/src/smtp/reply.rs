//! SMTP replies: a code, an enhanced status code (RFC 3463), and text.

use std::fmt;

/// One reply, possibly of several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `x.y.z`, or empty for replies that carry none (greeting, EHLO).
    pub status: &'static str,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// True for `4xx` and `5xx`.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the reply in wire form (`250-…` lines, then `250 …`).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last = self.lines.len().saturating_sub(1);
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            if self.status.is_empty() {
                write!(f, "{}{separator}{line}\r\n", self.code)?;
            } else {
                write!(f, "{}{separator}{} {line}\r\n", self.code, self.status)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes_until_the_last_line() {
        let reply = Reply {
            code: 250,
            status: "",
            lines: vec!["mx.example".into(), "PIPELINING".into(), "SIZE 100".into()],
        };
        assert_eq!(
            reply.to_string(),
            "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
        assert_eq!(
            Reply::new(550, "5.1.1", "no such user").to_string(),
            "550 5.1.1 no such user\r\n"
        );
    }
}
