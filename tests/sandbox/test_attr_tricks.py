"""Dunder and attribute tricks, type() and class tricks: reaching `object`, `__subclasses__`,
`__globals__` or `__builtins__` from ordinary values."""

from __future__ import annotations

from tests.sandbox.hostile import cases, stopped_test

SUBCLASSES_WALK = "print(().__class__.__bases__[0].__subclasses__())"
CLASS_OF_INT = "x = (1).__class__"
DICT_OF_FUNCTION = "def f():\n    pass\nprint(f.__dict__)"
FUNCTION_GLOBALS = "def f():\n    pass\ng = f.__globals__"
LAMBDA_CODE = "c = (lambda: 0).__code__"
BUILTIN_SELF = "m = abs.__self__"
MRO_METHOD = "print(int.mro())"
GETATTR_BUILTIN = "print(getattr(1, '__class__'))"
SETATTR_BUILTIN = "setattr(1, 'real', 2)"
TYPE_BUILTIN = "T = type('T', (), {'__eq__': print})"
OBJECT_BUILTIN = "o = object()"
SUPER_BUILTIN = "s = super()"
CLASS_DEFINITION = "class A:\n    pass"
CLASS_WITH_METACLASS = "class A(metaclass=type):\n    pass"
VARS_BUILTIN = "print(vars())"
GLOBALS_BUILTIN = "print(globals())"
LOCALS_BUILTIN = "print(locals())"
DIR_BUILTIN = "print(dir(1))"
BUILTINS_NAME = "b = __builtins__"
REBIND_GUARD = "_getattr_ = lambda obj, name: 1"
GUARD_AS_ARGUMENT = "def f(_getitem_=None):\n    return 1"
UNDERSCORE_VARIABLE = "_secret = 1"
ATTRIBUTE_WRITE_ON_MODULE = "import math\nmath.pi = 3"
ATTRIBUTE_WRITE_ON_INT = "x = 5\nx.real = 3"
ITEM_WRITE_ON_STRING = "s = 'abc'\ns[0] = 'x'"
DELETE_MODULE_ATTRIBUTE = "import math\ndel math.sqrt"
FACADE_INTERNALS = "import math\nprint(math._facade_members)"
STRING_SUBSCRIPT_NAME = "x = 'a'\ny = x['__class__']"
ID_BUILTIN = "print(id(1))"
ISSUBCLASS_BUILTIN = "print(issubclass(bool, int))"
NONLOCAL_STATEMENT = "def f():\n    x = 1\n    def g():\n        nonlocal x\n        x = 2\n    g()"
MATCH_STATEMENT = "match 1:\n    case 1:\n        pass"
AUGMENTED_MODULE_ATTRIBUTE = "import math\nmath.pi += 1"
AUGMENTED_STRING_ITEM = "s = 'ab'\ns[0] += 'x'"
AUGMENTED_SLICE = "xs = [1]\nxs[0:1] += [2]"

CASES = cases(
    (SUBCLASSES_WALK, "rejected", 'line 1: "__subclasses__" is an invalid attribute name because it starts with "_"'),
    (CLASS_OF_INT, "rejected", 'line 1: "__class__" is an invalid attribute name because it starts with "_"'),
    (DICT_OF_FUNCTION, "rejected", 'line 3: "__dict__" is an invalid attribute name because it starts with "_"'),
    (FUNCTION_GLOBALS, "rejected", 'line 3: "__globals__" is an invalid attribute name because it starts with "_"'),
    (LAMBDA_CODE, "rejected", 'line 1: "__code__" is an invalid attribute name because it starts with "_"'),
    (BUILTIN_SELF, "rejected", 'line 1: "__self__" is an invalid attribute name because it starts with "_"'),
    (MRO_METHOD, "error", "line 1: access to attribute 'mro' is not allowed"),
    (GETATTR_BUILTIN, "error", "line 1: name 'getattr' is not defined"),
    (SETATTR_BUILTIN, "error", "line 1: name 'setattr' is not defined"),
    (TYPE_BUILTIN, "error", "line 1: name 'type' is not defined"),
    (OBJECT_BUILTIN, "error", "line 1: name 'object' is not defined"),
    (SUPER_BUILTIN, "error", "line 1: name 'super' is not defined"),
    (CLASS_DEFINITION, "rejected", "line 1: class definitions are not allowed"),
    (CLASS_WITH_METACLASS, "rejected", "line 1: class definitions are not allowed"),
    (VARS_BUILTIN, "error", "line 1: name 'vars' is not defined"),
    (GLOBALS_BUILTIN, "error", "line 1: name 'globals' is not defined"),
    (LOCALS_BUILTIN, "error", "line 1: name 'locals' is not defined"),
    (DIR_BUILTIN, "error", "line 1: name 'dir' is not defined"),
    (BUILTINS_NAME, "rejected", 'line 1: "__builtins__" is an invalid variable name because it starts with "_"'),
    (REBIND_GUARD, "rejected", 'line 1: "_getattr_" is an invalid variable name because it starts with "_"'),
    (GUARD_AS_ARGUMENT, "rejected", 'line 1: "_getitem_" is an invalid variable name because it starts with "_"'),
    (UNDERSCORE_VARIABLE, "rejected", 'line 1: "_secret" is an invalid variable name because it starts with "_"'),
    (ATTRIBUTE_WRITE_ON_MODULE, "error", "line 2: 'Facade' objects cannot be modified in the sandbox"),
    (ATTRIBUTE_WRITE_ON_INT, "error", "line 2: 'int' objects cannot be modified in the sandbox"),
    (ITEM_WRITE_ON_STRING, "error", "line 2: 'str' objects cannot be modified in the sandbox"),
    (DELETE_MODULE_ATTRIBUTE, "error", "line 2: 'Facade' objects cannot be modified in the sandbox"),
    (FACADE_INTERNALS, "rejected", 'line 2: "_facade_members" is an invalid attribute name because it starts with "_"'),
    (STRING_SUBSCRIPT_NAME, "error", "line 2: TypeError: string indices must be integers, not 'str'"),
    (ID_BUILTIN, "error", "line 1: name 'id' is not defined"),
    (ISSUBCLASS_BUILTIN, "error", "line 1: name 'issubclass' is not defined"),
    (NONLOCAL_STATEMENT, "rejected", "line 4: Nonlocal statements are not allowed"),
    (MATCH_STATEMENT, "rejected", "line 1: Match statements are not allowed"),
    (AUGMENTED_MODULE_ATTRIBUTE, "rejected", "line 2: Augmented assignment of attributes is not allowed"),
    (AUGMENTED_STRING_ITEM, "error", "line 2: 'str' objects cannot be modified in the sandbox"),
    (AUGMENTED_SLICE, "rejected", "line 2: Augmented assignment of object items and slices is not allowed"),
)


test_attribute_trick_is_stopped = stopped_test(CASES)


def test_allowed_attributes_still_work(run_hostile):
    result = run_hostile("x = 7.5\nprint(x.is_integer(), (3).bit_length(), 'ab'.upper())")
    assert result.status == "ok" and result.answer == "False 2 AB"
