//! {{name}}: a mailcall rule. Dials the configured `number` when the Subject
//! mentions the configured `keyword`; otherwise has no opinion.

wit_bindgen::generate!({ path: "wit", world: "rule" });

use mailcall::rule::config;
use mailcall::rule::types::Dial;

struct MyRule;

impl Guest for MyRule {
    fn resolve(_envelope: Envelope, message: Message) -> Decision {
        let keyword = config::get("keyword").unwrap_or_else(|| "CALL-ME".into());
        let number = config::get("number").unwrap_or_else(|| "05012345678".into());
        let subject = message.subject.unwrap_or_default();
        if subject.to_lowercase().contains(&keyword.to_lowercase()) {
            let reason = format!("the Subject mentions {keyword}");
            return Decision::Dial(Dial { number, reason });
        }
        Decision::NoOpinion
    }
}

export!(MyRule);
