"""mtopt.collect"""
