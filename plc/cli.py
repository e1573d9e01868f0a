def add_parser(sp): pass
