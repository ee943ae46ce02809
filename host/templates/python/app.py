"""{{name}}: a mailcall rule. Dials the configured `number` when the Subject
mentions the configured `keyword`; otherwise has no opinion."""

import wit_world
from wit_world.imports import config
from wit_world.imports.types import Decision_Dial, Decision_NoOpinion, Dial


class WitWorld(wit_world.WitWorld):
    def resolve(self, envelope, message):
        keyword = config.get("keyword") or "CALL-ME"
        number = config.get("number") or "05012345678"
        subject = message.subject or ""
        if keyword.lower() in subject.lower():
            return Decision_Dial(Dial(number=number, reason=f"the Subject mentions {keyword}"))
        return Decision_NoOpinion()
