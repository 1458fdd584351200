"""The one exception type for mistakes a user can fix: bad config, bad data, missing paths.

The CLI prints its message on one line and exits 2; the dashboard shows it next to the form.
"""


class UserError(Exception):
    """A problem with the user's input; the message names the field or file and the fix."""
