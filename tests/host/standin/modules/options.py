"""Follows ``modules/options.py``: ``OptionInfo(default, label, component, component_args, ..., section)`` and
``Options.add_option`` / attribute access / ``data``."""


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section = section
        self.do_not_save = False

    def info(self, text):
        return self

    def needs_reload_ui(self):
        return self


class Options:
    def __init__(self, defaults):
        object.__setattr__(self, "data", dict(defaults))
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not info.do_not_save:
            self.data[key] = info.default

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value

    def get_default(self, key):
        return self.data_labels[key].default if key in self.data_labels else None
