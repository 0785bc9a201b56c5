"""mtopt.qtopt"""
