"""embedded-number (claim 2), in Python: the same rule as rules/embedded-number
(Rust). Dials a number of the numbering plan written in the message itself.

Places are searched in order: the recipient address (local part, then
domain), the display name of this recipient in To / Cc, the Subject, the
human-written headers (only when the recipient is not listed in To / Cc),
then the body. The host finds the numbers (`numbers.find_first`) and folds
the text (`text.fold`).
"""

import wit_world
from wit_world.imports import numbers, text
from wit_world.imports.types import Decision_Dial, Decision_NoOpinion, Dial


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
        for field, mailboxes in (("To", message.to), ("Cc", message.cc)):
            for mailbox in mailboxes:
                if mailbox.address is None or text.fold(mailbox.address.strip(" ")) != wanted:
                    continue
                recipient_listed = True
                if mailbox.name is None:
                    continue
                found = numbers.find_first(mailbox.name)
                if found is not None:
                    return dial(found, f"the display name of the recipient in {field}")

        # 3. The Subject.
        if message.subject is not None:
            found = numbers.find_first(message.subject)
            if found is not None:
                return dial(found, "Subject")

        # 4. The other human-written headers, unless the recipient is listed
        #    in To / Cc (then their numbers may be another recipient's).
        if not recipient_listed:
            for header in message.headers:
                if not text.is_human_header(header.name) or text.fold(header.name) == "subject":
                    continue
                found = numbers.find_first(header.value)
                if found is not None:
                    return dial(found, f"the {header.name} header")

        # 5. The body.
        found = numbers.find_first(message.body_text)
        if found is not None:
            return dial(found, "the message body")
        return Decision_NoOpinion()
