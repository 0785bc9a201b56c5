"""mtopt.eval"""
