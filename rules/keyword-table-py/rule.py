"""keyword-table (claim 4), in Python: the same rule as rules/keyword-table
(Rust). An operator's table (configuration value `table`, default
`keywords`) maps keywords to numbers.

Places are searched in order: RCPT TO, the human-written headers in message
order (never trace or identifier headers), then the body; the first place
that holds a keyword wins. The host searches the table
(`tables.search_keywords_in`: folded text, whole words for ASCII keywords,
the first keyword written). Places are named as parts of the message
(`Part_Body()`), never sent back as text: the host reads them itself.
"""

import wit_world
from wit_world.imports import config, tables, text
from wit_world.imports.types import (
    Decision_Dial,
    Decision_NoOpinion,
    Dial,
    Part_Body,
    Part_Header,
    Part_RcptTo,
)


class WitWorld(wit_world.WitWorld):
    def resolve(self, envelope, message):
        table = config.get("table")
        if table is None:
            table = "keywords"
        places = [("RCPT TO", Part_RcptTo())]
        places += [
            (f"the {header.name} header", Part_Header(i))
            for i, header in enumerate(message.headers)
            if text.is_human_header(header.name)
        ]
        places.append(("the message body", Part_Body()))

        for place, part in places:
            match = tables.search_keywords_in(table, part)
            if match is not None:
                reason = f"keyword {match.keyword} in {place}"
                return Decision_Dial(Dial(number=match.number, reason=reason))
        return Decision_NoOpinion()
