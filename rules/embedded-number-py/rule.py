"""embedded-number (claim 2), in Python: the same rule as rules/embedded-number
(Rust). Dials a number of the numbering plan written in the message itself.

Places are searched in order: the recipient address (local part, then
domain), the display name of this recipient in To / Cc, the Subject, the
human-written headers (only when the recipient is not listed in To / Cc),
then the body. The host finds the numbers (`numbers.find_first`) and folds
the text (`text.fold`). The message's own texts are named as parts
(`Part_Body()`) for `numbers.find_first_in`, never sent back: the host reads
them itself.
"""

import wit_world
from wit_world.imports import numbers, text
from wit_world.imports.types import (
    Decision_Dial,
    Decision_NoOpinion,
    Dial,
    Part_Body,
    Part_CcName,
    Part_Header,
    Part_Subject,
    Part_ToName,
)


def dial(found, where):
    return Decision_Dial(Dial(number=found.number, reason=f"number {found.written} in {where}"))


class WitWorld(wit_world.WitWorld):
    def resolve(self, envelope, message):
        rcpt = envelope.rcpt_to

        # 1. The recipient address, split at its last '@'.
        local, at, domain = rcpt.rpartition("@")
        if not at:
            local, domain = rcpt, ""
        found = numbers.find_first(local)
        if found is not None:
            return dial(found, "the recipient address (local part)")
        found = numbers.find_first(domain)
        if found is not None:
            return dial(found, "the recipient address (domain)")

        # 2. The display name of this recipient in To, then in Cc.
        # (strip(" "): ASCII spaces only, as in every language.)
        wanted = text.fold(rcpt.strip(" "))
        recipient_listed = False
        for field, mailboxes, name_part in (
            ("To", message.to, Part_ToName),
            ("Cc", message.cc, Part_CcName),
        ):
            for i, mailbox in enumerate(mailboxes):
                if mailbox.address is None or text.fold(mailbox.address.strip(" ")) != wanted:
                    continue
                recipient_listed = True
                if mailbox.name is None:
                    continue
                found = numbers.find_first_in(name_part(i))
                if found is not None:
                    return dial(found, f"the display name of the recipient in {field}")

        # 3. The Subject.
        if message.subject is not None:
            found = numbers.find_first_in(Part_Subject())
            if found is not None:
                return dial(found, "Subject")

        # 4. The other human-written headers, unless the recipient is listed
        #    in To / Cc (then their numbers may be another recipient's).
        if not recipient_listed:
            for i, header in enumerate(message.headers):
                if not text.is_human_header(header.name) or text.fold(header.name) == "subject":
                    continue
                found = numbers.find_first_in(Part_Header(i))
                if found is not None:
                    return dial(found, f"the {header.name} header")

        # 5. The body.
        found = numbers.find_first_in(Part_Body())
        if found is not None:
            return dial(found, "the message body")
        return Decision_NoOpinion()
