"""mtopt.store"""
